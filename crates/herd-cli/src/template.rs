//! The command template: replacement strings, and whether a job needs a
//! shell.
//!
//! A command whose words hold no shell syntax runs directly: each word,
//! with its replacement strings filled in, is one argument, so an input
//! with spaces, quotes or a leading dash reaches the program exactly as it
//! was (no quoting to get wrong, no shell to start). A command with shell
//! syntax (`|`, `>`, `$VAR`, `;`, quotes, globs, a builtin such as `cd`)
//! runs as `/bin/sh -c LINE`, where LINE joins the words with spaces, as
//! GNU parallel does, and every input is single-quoted into it.

use crate::CliError;
use crate::input::Tuple;

/// What a replacement string takes from its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// `{}`: the input.
    Whole,
    /// `{.}`: without its extension.
    NoExt,
    /// `{/}`: its last path component.
    Base,
    /// `{//}`: its directory.
    Dir,
    /// `{/.}`: its last path component without the extension.
    BaseNoExt,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    /// `pos` is 1-based; `None` is every input, space-separated.
    Input {
        pos: Option<usize>,
        op: Op,
    },
    /// `{#}`: the job's sequence number.
    Seq,
    /// `{%}`: the job slot, 1 to the number of jobs at once.
    Slot,
}

/// A parsed command template.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    words: Vec<Vec<Part>>,
    shell: bool,
    /// No command at all: each input is itself a command line.
    inputs_are_commands: bool,
}

/// A job's command, ready to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Prepared {
    /// argv, run without a shell.
    Direct(Vec<Vec<u8>>),
    /// A line for `/bin/sh -c`.
    Shell(Vec<u8>),
}

/// First words that are shell builtins or keywords with no program of
/// their own (or whose program would not do the same thing).
const SHELL_WORDS: &[&str] = &[
    ".", ":", "alias", "break", "case", "cd", "continue", "eval", "exec", "exit", "export", "for",
    "function", "if", "let", "local", "read", "readonly", "return", "set", "shift", "source",
    "trap", "ulimit", "umask", "unalias", "unset", "until", "wait", "while", "{", "!",
];

impl Template {
    /// Parses the command words; `arity` is the number of inputs each job
    /// gets (the number of sources).
    pub(crate) fn parse(words: &[String], arity: usize) -> Result<Self, CliError> {
        if words.is_empty() {
            return Ok(Self {
                words: Vec::new(),
                shell: true,
                inputs_are_commands: true,
            });
        }
        let mut parsed: Vec<Vec<Part>> = words.iter().map(|w| parse_word(w)).collect();
        // Any replacement string, `{#}` and `{%}` included, means the
        // command places what it needs: GNU parallel appends the input
        // only to a command with none.
        let has_replacement = parsed.iter().flatten().any(|p| !matches!(p, Part::Lit(_)));
        if !has_replacement {
            parsed.push(vec![Part::Input {
                pos: None,
                op: Op::Whole,
            }]);
        }
        for part in parsed.iter().flatten() {
            if let Part::Input { pos: Some(n), .. } = part
                && (*n == 0 || *n > arity)
            {
                return Err(CliError::Usage(format!(
                    "the command uses {{{n}}}, but there {} {arity} input source{}",
                    if arity == 1 { "is" } else { "are" },
                    if arity == 1 { "" } else { "s" },
                )));
            }
        }
        let mut shell = SHELL_WORDS.contains(&words[0].as_str());
        for (i, word) in parsed.iter().enumerate() {
            let whole_word = word.len() == 1;
            for part in word {
                match part {
                    Part::Lit(text) => shell |= has_shell_syntax(text, i == 0),
                    // `x{}y` with several inputs: the shell's word
                    // splitting decides what it becomes.
                    Part::Input { pos: None, .. } if arity > 1 && !whole_word => shell = true,
                    _ => {}
                }
            }
        }
        Ok(Self {
            words: parsed,
            shell,
            inputs_are_commands: false,
        })
    }

    /// Whether jobs run through `/bin/sh -c`.
    #[cfg(test)]
    pub(crate) fn uses_shell(&self) -> bool {
        self.shell
    }

    /// The command for one job.
    pub(crate) fn render(&self, inputs: &Tuple, seq: u64, slot: usize) -> Prepared {
        if self.inputs_are_commands {
            return Prepared::Shell(inputs.join(&b' '));
        }
        if self.shell {
            let mut line = Vec::new();
            for (i, word) in self.words.iter().enumerate() {
                if i > 0 {
                    line.push(b' ');
                }
                for part in word {
                    match part {
                        Part::Lit(t) => line.extend_from_slice(t.as_bytes()),
                        Part::Input { pos: Some(n), op } => {
                            quote_into(&mut line, &apply(*op, &inputs[n - 1]));
                        }
                        Part::Input { pos: None, op } => {
                            for (k, v) in inputs.iter().enumerate() {
                                if k > 0 {
                                    line.push(b' ');
                                }
                                quote_into(&mut line, &apply(*op, v));
                            }
                        }
                        Part::Seq => line.extend_from_slice(seq.to_string().as_bytes()),
                        Part::Slot => line.extend_from_slice(slot.to_string().as_bytes()),
                    }
                }
            }
            return Prepared::Shell(line);
        }
        let mut argv = Vec::with_capacity(self.words.len() + inputs.len());
        for word in &self.words {
            if let [Part::Input { pos: None, op }] = word.as_slice() {
                argv.extend(inputs.iter().map(|v| apply(*op, v)));
                continue;
            }
            let mut arg = Vec::new();
            for part in word {
                match part {
                    Part::Lit(t) => arg.extend_from_slice(t.as_bytes()),
                    Part::Input { pos: Some(n), op } => arg.extend(apply(*op, &inputs[n - 1])),
                    Part::Input { pos: None, op } => {
                        // One input here (several force the shell).
                        for v in inputs {
                            arg.extend(apply(*op, v));
                        }
                    }
                    Part::Seq => arg.extend_from_slice(seq.to_string().as_bytes()),
                    Part::Slot => arg.extend_from_slice(slot.to_string().as_bytes()),
                }
            }
            argv.push(arg);
        }
        Prepared::Direct(argv)
    }
}

impl Prepared {
    /// The command as a shell line: what `--dry-run` prints and the
    /// joblog records (a direct command's arguments quoted as needed).
    pub(crate) fn display(&self) -> Vec<u8> {
        match self {
            Self::Shell(line) => line.clone(),
            Self::Direct(argv) => {
                let mut line = Vec::new();
                for (i, a) in argv.iter().enumerate() {
                    if i > 0 {
                        line.push(b' ');
                    }
                    quote_into(&mut line, a);
                }
                line
            }
        }
    }
}

fn parse_word(word: &str) -> Vec<Part> {
    let mut parts = Vec::new();
    let mut lit = String::new();
    let mut rest = word;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        let inner = &rest[open + 1..open + close];
        match parse_replacement(inner) {
            Some(part) => {
                lit.push_str(&rest[..open]);
                if !lit.is_empty() {
                    parts.push(Part::Lit(std::mem::take(&mut lit)));
                }
                parts.push(part);
                rest = &rest[open + close + 1..];
            }
            None => {
                lit.push_str(&rest[..=open]);
                rest = &rest[open + 1..];
            }
        }
    }
    lit.push_str(rest);
    if !lit.is_empty() || parts.is_empty() {
        parts.push(Part::Lit(lit));
    }
    parts
}

fn parse_replacement(inner: &str) -> Option<Part> {
    match inner {
        "#" => return Some(Part::Seq),
        "%" => return Some(Part::Slot),
        _ => {}
    }
    let digits = inner.bytes().take_while(u8::is_ascii_digit).count();
    let pos = if digits > 0 {
        Some(inner[..digits].parse().ok()?)
    } else {
        None
    };
    let op = match &inner[digits..] {
        "" => Op::Whole,
        "." => Op::NoExt,
        "/" => Op::Base,
        "//" => Op::Dir,
        "/." => Op::BaseNoExt,
        _ => return None,
    };
    Some(Part::Input { pos, op })
}

/// Whether literal command text needs a shell to mean what it says.
fn has_shell_syntax(text: &str, first_word: bool) -> bool {
    let b = text.as_bytes();
    if first_word && b.contains(&b'=') {
        return true;
    }
    if matches!(b.first(), Some(b'#' | b'~' | b'!')) {
        return true;
    }
    b.iter().any(|c| {
        matches!(
            c,
            b' ' | b'\t'
                | b'\n'
                | b'|'
                | b'&'
                | b';'
                | b'<'
                | b'>'
                | b'('
                | b')'
                | b'$'
                | b'`'
                | b'\\'
                | b'"'
                | b'\''
                | b'*'
                | b'?'
                | b'['
                | b'{'
                | b'}'
        )
    })
}

/// Appends `value` quoted for the shell: as is when it holds only safe
/// characters, else in single quotes (a quote inside becomes `'\''`).
fn quote_into(out: &mut Vec<u8>, value: &[u8]) {
    let safe = !value.is_empty()
        && value.iter().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(
                    c,
                    b'_' | b'-' | b'.' | b'/' | b',' | b':' | b'+' | b'@' | b'%' | b'='
                )
        });
    if safe {
        out.extend_from_slice(value);
        return;
    }
    out.push(b'\'');
    for &c in value {
        if c == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(c);
        }
    }
    out.push(b'\'');
}

fn apply(op: Op, v: &[u8]) -> Vec<u8> {
    match op {
        Op::Whole => v.to_vec(),
        Op::NoExt => strip_ext(v).to_vec(),
        Op::Base => base(v).to_vec(),
        Op::Dir => dir(v),
        Op::BaseNoExt => strip_ext(base(v)).to_vec(),
    }
}

fn base(v: &[u8]) -> &[u8] {
    match v.iter().rposition(|&c| c == b'/') {
        Some(i) => &v[i + 1..],
        None => v,
    }
}

/// Removes the last `.ext` of the last path component, as GNU parallel
/// does (`s:\.[^/.]*$::`): `a.b/c` keeps its dot, `x.tar.gz` becomes
/// `x.tar`, and a dot file `.bashrc` becomes empty, `a.` becomes `a`.
fn strip_ext(v: &[u8]) -> &[u8] {
    let start = v.iter().rposition(|&c| c == b'/').map_or(0, |i| i + 1);
    match v[start..].iter().rposition(|&c| c == b'.') {
        Some(dot) => &v[..start + dot],
        None => v,
    }
}

/// The directory, as `dirname(1)` gives it: `.` for a bare name, `/` for
/// a file in the root.
fn dir(v: &[u8]) -> Vec<u8> {
    let trimmed = {
        let mut end = v.len();
        while end > 1 && v[end - 1] == b'/' {
            end -= 1;
        }
        &v[..end]
    };
    match trimmed.iter().rposition(|&c| c == b'/') {
        None => b".".to_vec(),
        Some(i) => {
            let mut end = i;
            while end > 0 && trimmed[end - 1] == b'/' {
                end -= 1;
            }
            if end == 0 {
                b"/".to_vec()
            } else {
                trimmed[..end].to_vec()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(words: &[&str], arity: usize) -> Template {
        let w: Vec<String> = words.iter().map(|s| s.to_string()).collect();
        Template::parse(&w, arity).unwrap()
    }

    fn tuple(v: &[&str]) -> Tuple {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    fn direct(p: Prepared) -> Vec<String> {
        match p {
            Prepared::Direct(a) => a
                .into_iter()
                .map(|a| String::from_utf8(a).unwrap())
                .collect(),
            Prepared::Shell(l) => panic!("expected direct, got shell {:?}", String::from_utf8(l)),
        }
    }

    fn shell(p: Prepared) -> String {
        match p {
            Prepared::Shell(l) => String::from_utf8(l).unwrap(),
            Prepared::Direct(a) => panic!("expected shell, got {a:?}"),
        }
    }

    #[test]
    fn every_replacement_string() {
        let tpl = t(&["x", "{}", "{.}", "{/}", "{//}", "{/.}", "{#}", "{%}"], 1);
        let got = direct(tpl.render(&tuple(&["dir/sub/file.tar.gz"]), 7, 2));
        assert_eq!(
            got,
            [
                "x",
                "dir/sub/file.tar.gz",
                "dir/sub/file.tar",
                "file.tar.gz",
                "dir/sub",
                "file.tar",
                "7",
                "2"
            ]
        );
    }

    #[test]
    fn positional_and_their_ops() {
        let tpl = t(&["cp", "{1}", "{2//}/{1/.}.bak"], 2);
        let got = direct(tpl.render(&tuple(&["a/b.txt", "out/x"]), 1, 1));
        assert_eq!(got, ["cp", "a/b.txt", "out/b.bak"]);
        let w = vec!["echo".to_string(), "{3}".to_string()];
        assert!(Template::parse(&w, 2).is_err());
    }

    #[test]
    fn path_edge_cases() {
        assert_eq!(strip_ext(b"a.b/c"), b"a.b/c");
        assert_eq!(strip_ext(b".bashrc"), b"");
        assert_eq!(strip_ext(b"a."), b"a");
        assert_eq!(strip_ext(b"dir/.x"), b"dir/");
        assert_eq!(strip_ext(b"x.y"), b"x");
        assert_eq!(dir(b"file"), b".");
        assert_eq!(dir(b"/file"), b"/");
        assert_eq!(dir(b"a//b/"), b"a");
        assert_eq!(base(b"a/b/"), b"");
    }

    #[test]
    fn no_replacement_appends_every_input() {
        let tpl = t(&["echo"], 2);
        assert_eq!(
            direct(tpl.render(&tuple(&["a b", "c"]), 1, 1)),
            ["echo", "a b", "c"]
        );
    }

    #[test]
    fn awkward_inputs_stay_one_argument_without_a_shell() {
        let tpl = t(&["printf", "%s:", "{}"], 1);
        assert!(!tpl.uses_shell());
        for awkward in ["it's", "a \"b\" c", "-n", "--", "$HOME", "x\ny", "*"] {
            assert_eq!(direct(tpl.render(&tuple(&[awkward]), 1, 1))[2], awkward);
        }
    }

    #[test]
    fn shell_syntax_quotes_the_inputs() {
        let tpl = t(&["echo {} | tr a b"], 1);
        assert!(tpl.uses_shell());
        assert_eq!(
            shell(tpl.render(&tuple(&["it's"]), 1, 1)),
            "echo 'it'\\''s' | tr a b"
        );
        assert_eq!(shell(tpl.render(&tuple(&[""]), 1, 1)), "echo '' | tr a b");
        assert_eq!(
            shell(tpl.render(&tuple(&["a.txt"]), 1, 1)),
            "echo a.txt | tr a b"
        );
        assert!(t(&["cd", "{}"], 1).uses_shell());
        assert!(t(&["FOO=1", "env"], 1).uses_shell());
        assert!(!t(&["gzip", "--best", "{}"], 1).uses_shell());
        assert!(t(&["x{}y"], 2).uses_shell());
    }

    #[test]
    fn seq_or_slot_alone_does_not_append_the_input() {
        // GNU: `parallel echo {#} ::: A B C` prints 1 2 3.
        let tpl = t(&["echo", "{#}"], 1);
        assert_eq!(direct(tpl.render(&tuple(&["A"]), 1, 1)), ["echo", "1"]);
        let tpl = t(&["echo", "job-{%}"], 1);
        assert_eq!(direct(tpl.render(&tuple(&["A"]), 1, 2)), ["echo", "job-2"]);
    }

    #[test]
    fn no_command_runs_inputs_as_commands() {
        let tpl = t(&[], 1);
        assert_eq!(
            shell(tpl.render(&tuple(&["echo a; echo b"]), 1, 1)),
            "echo a; echo b"
        );
    }

    #[test]
    fn unknown_braces_stay_literal() {
        assert_eq!(parse_word("{x}"), vec![Part::Lit("{x}".into())]);
        assert!(t(&["echo", "{x}", "{}"], 1).uses_shell());
        assert_eq!(
            parse_word("a{}b"),
            vec![
                Part::Lit("a".into()),
                Part::Input {
                    pos: None,
                    op: Op::Whole
                },
                Part::Lit("b".into())
            ]
        );
    }

    #[test]
    fn display_quotes_direct_arguments() {
        let p = Prepared::Direct(vec![b"echo".to_vec(), b"a b".to_vec()]);
        assert_eq!(p.display(), b"echo 'a b'");
    }
}
