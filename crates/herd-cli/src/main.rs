//! `herd`: run jobs in parallel (GNU parallel's and `xargs -P`'s job),
//! locally or on workers on other machines, and watch the processes herd
//! started.
//!
//! ```text
//! herd run -j4 gzip -k {} ::: *.log          # one job per input, 4 at a time
//! herd serve --bind 127.0.0.1:7878           # a manager other machines reach
//! herd worker --connect 10.0.0.5:7878        # run the jobs it serves
//! herd run --workers 10.0.0.5:7878 ...       # spread one run over them
//! herd ps                                    # what herd started, as a tree
//! herd status 10.0.0.5:7878                  # queues, leases, workers
//! ```
//!
//! herd's own messages go to stderr only; stdout carries the jobs' output.

mod cmdline;
mod guard;
mod input;
mod joblog;
mod output;
mod ps;
mod registry;
mod remote;
mod run;
mod status;
mod template;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// The command line.
#[derive(Debug, Parser)]
#[command(name = "herd", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a command once per input, several at a time.
    ///
    /// Inputs come from `::: a b c` arguments, `:::: FILE` files (one line
    /// is one input; `-` is stdin), or stdin when neither is given. Several
    /// sources combine into every combination, the last varying fastest;
    /// `:::+` and `::::+` pair a source with the one before instead.
    /// Replacement strings: {} {.} {/} {//} {/.} {#} {%} and {1} {2} ...
    /// ({1.} {2/} ... too). Without any, the input is appended.
    ///
    /// Exit status: 0 when every job succeeded; else the number of failed
    /// jobs, at most 100; 101 when more than 100 failed; with `--halt`,
    /// the status GNU parallel gives (the halting job's, or the share that
    /// failed); 255 for herd's own errors.
    Run(RunArgs),
    /// Serve a manager: named queues and results for submitters and
    /// workers on other machines.
    Serve(ServeArgs),
    /// Queue jobs on a manager for its workers, and (by default) wait for
    /// their output and exit codes.
    Submit(SubmitArgs),
    /// Take jobs from a manager and run them.
    Worker(WorkerArgs),
    /// Show the processes herd started, as a tree.
    Ps(PsArgs),
    /// Show a manager's queues, leases, connections and throughput.
    Status(StatusArgs),
}

/// How jobs are built and run: shared by `run` and `submit`.
#[derive(Debug, Clone, Args)]
pub(crate) struct JobArgs {
    /// Jobs at once: a number, or a percentage of the CPUs (`50%`).
    /// Default: one per CPU.
    #[arg(short = 'j', long = "jobs", value_name = "N|N%")]
    pub(crate) jobs: Option<String>,
    /// Print the jobs' output in input order (not completion order).
    #[arg(short = 'k', long = "keep-order")]
    pub(crate) keep_order: bool,
    /// Inputs from stdin and files are separated by NUL, not newline.
    #[arg(short = '0', long = "null")]
    pub(crate) null: bool,
    /// Read inputs from FILE (like `:::: FILE`); repeatable.
    #[arg(short = 'a', long = "arg-file", value_name = "FILE")]
    pub(crate) arg_files: Vec<std::path::PathBuf>,
    /// Pass each line to the output as soon as it is complete (lines of
    /// different jobs may interleave, a line never splits).
    #[arg(long = "line-buffer", conflicts_with = "ungroup")]
    pub(crate) line_buffer: bool,
    /// Let jobs write straight to herd's stdout and stderr (fastest;
    /// output of different jobs may mix mid-line).
    #[arg(short = 'u', long = "ungroup")]
    pub(crate) ungroup: bool,
    /// Record every finished job in FILE (GNU parallel's columns).
    #[arg(long = "joblog", value_name = "FILE")]
    pub(crate) joblog: Option<std::path::PathBuf>,
    /// Skip the jobs the joblog records as run (needs --joblog).
    #[arg(long = "resume", requires = "joblog")]
    pub(crate) resume: bool,
    /// Skip the jobs the joblog records as succeeded; run failed ones
    /// again (needs --joblog).
    #[arg(long = "resume-failed", requires = "joblog", conflicts_with = "resume")]
    pub(crate) resume_failed: bool,
    /// Run a failing job up to N times in all.
    #[arg(long = "retries", value_name = "N", default_value_t = 1)]
    pub(crate) retries: u32,
    /// Kill a job that runs longer than SECS seconds, or than N% of the
    /// median run time of the jobs finished so far (`200%`).
    #[arg(long = "timeout", value_name = "SECS|N%")]
    pub(crate) timeout: Option<String>,
    /// When to stop: `never` (default), `now,fail=N`, `soon,fail=N`,
    /// `now,success=N`, `soon,success=N`, `N%` forms too (`soon,fail=10%`).
    /// `now` kills running jobs; `soon` lets them finish.
    #[arg(long = "halt", value_name = "SPEC", default_value = "never")]
    pub(crate) halt: String,
    /// Show progress with an estimate of the time left (on stderr).
    #[arg(long = "bar")]
    pub(crate) bar: bool,
    /// Print the commands instead of running them.
    #[arg(long = "dry-run")]
    pub(crate) dry_run: bool,
    /// The command and its inputs: `CMD [ARGS] [::: INPUTS] [:::: FILES]`.
    // `OsString`, not `String`: an input or file name after `:::` need not
    // be UTF-8.
    #[arg(trailing_var_arg = true, value_name = "COMMAND")]
    pub(crate) command: Vec<std::ffi::OsString>,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    job: JobArgs,
    /// Run the jobs on the workers of the manager at ADDR
    /// (`host:port` or `nats://host:port`) instead of here.
    #[arg(long = "workers", value_name = "ADDR")]
    workers: Option<String>,
    #[command(flatten)]
    key: KeyArgs,
}

/// The shared secret a manager and its clients prove they know.
#[derive(Debug, Clone, Args)]
pub(crate) struct KeyArgs {
    /// The key (prefer HERD_KEY or --key-file: arguments are visible
    /// in `ps`).
    #[arg(long = "key", env = "HERD_KEY", hide_env_values = true)]
    pub(crate) key: Option<String>,
    /// Read the key from FILE (trailing newline ignored).
    #[arg(long = "key-file", value_name = "FILE", conflicts_with = "key")]
    pub(crate) key_file: Option<std::path::PathBuf>,
}

impl KeyArgs {
    /// The key bytes, from `--key`, `HERD_KEY` or `--key-file`.
    pub(crate) fn resolve(&self) -> Result<Vec<u8>, CliError> {
        if let Some(key) = &self.key {
            return Ok(key.as_bytes().to_vec());
        }
        if let Some(path) = &self.key_file {
            let mut bytes = std::fs::read(path)
                .map_err(|e| CliError::io(format!("reading the key file {}", path.display()), e))?;
            while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                bytes.pop();
            }
            return Ok(bytes);
        }
        Err(CliError::Usage(
            "a key is needed: --key-file FILE, HERD_KEY, or --key".into(),
        ))
    }
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// The address to listen on.
    #[arg(long = "bind", default_value = "127.0.0.1:7878")]
    bind: String,
    #[command(flatten)]
    key: KeyArgs,
    /// Keep queued jobs and results in this database file, so a
    /// restarted manager has them.
    #[arg(long = "persist", value_name = "FILE")]
    persist: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
struct SubmitArgs {
    /// The manager: `host:port` or `nats://host:port`.
    #[arg(long = "connect", value_name = "ADDR")]
    connect: String,
    #[command(flatten)]
    key: KeyArgs,
    /// Return once the jobs are queued; print the batch id to collect
    /// them with `--collect`.
    #[arg(long = "no-wait")]
    no_wait: bool,
    /// Wait for the results of an earlier `--no-wait` batch.
    #[arg(long = "collect", value_name = "BATCH", conflicts_with = "no_wait")]
    collect: Option<String>,
    #[command(flatten)]
    job: JobArgs,
}

#[derive(Debug, Args)]
struct WorkerArgs {
    /// The manager: `host:port` or `nats://host:port`.
    #[arg(long = "connect", value_name = "ADDR")]
    connect: String,
    #[command(flatten)]
    key: KeyArgs,
    /// Jobs at once: a number, or a percentage of the CPUs.
    #[arg(short = 'j', long = "jobs", value_name = "N|N%")]
    jobs: Option<String>,
    /// Stop after this many jobs (default: run until killed).
    #[arg(long = "max-jobs", value_name = "N")]
    max_jobs: Option<u64>,
    /// The name this worker reports in the joblog's host column
    /// (default: the host name).
    #[arg(long = "name")]
    name: Option<String>,
}

#[derive(Debug, Args)]
struct PsArgs {
    /// Print JSON lines instead of a table.
    #[arg(long = "json")]
    json: bool,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// The manager: `host:port`.
    addr: String,
    #[command(flatten)]
    key: KeyArgs,
    /// Sample twice this many milliseconds apart to measure throughput.
    #[arg(long = "interval", default_value_t = 1000)]
    interval_ms: u64,
    /// Print JSON instead of a table.
    #[arg(long = "json")]
    json: bool,
}

/// herd's own failure: reported on stderr, exit status 255.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Manager(#[from] herd::manager::ManagerError),
}

impl CliError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => match args.workers {
            Some(addr) => remote::run_remote(&addr, &args.key, args.job, remote::Wait::Yes),
            None => run::run_local(args.job),
        },
        Command::Serve(args) => remote::serve(&args.bind, &args.key, args.persist.as_deref()),
        Command::Submit(args) => match args.collect {
            Some(batch) => remote::collect(&args.connect, &args.key, &batch, args.job),
            None => {
                let wait = if args.no_wait {
                    remote::Wait::No
                } else {
                    remote::Wait::Yes
                };
                remote::run_remote(&args.connect, &args.key, args.job, wait)
            }
        },
        Command::Worker(args) => remote::worker(
            &args.connect,
            &args.key,
            args.jobs.as_deref(),
            args.max_jobs,
            args.name,
        ),
        Command::Ps(args) => ps::run(args.json),
        Command::Status(args) => status::run(&args.addr, &args.key, args.interval_ms, args.json),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("herd: {e}");
            ExitCode::from(255)
        }
    }
}
