//! Splits `herd run`'s trailing words into the command template and its
//! input sources, GNU parallel's way: `:::` starts a list of inputs,
//! `::::` a list of files (each file a source, `-` meaning stdin), and a
//! trailing `+` (`:::+`, `::::+`) pairs a source with the one before it
//! instead of combining every input with every other.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::CliError;

/// Where one source's inputs come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SourceKind {
    /// Inputs given on the command line after `:::`.
    Args(Vec<Vec<u8>>),
    /// One input per line (or NUL-separated) of a file; `-` is stdin.
    File(PathBuf),
}

/// One input source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Source {
    pub(crate) kind: SourceKind,
    /// Paired with the source before it (`:::+`), not combined.
    pub(crate) linked: bool,
}

/// The command template's words and the sources, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Split {
    pub(crate) command: Vec<String>,
    pub(crate) sources: Vec<Source>,
}

/// Splits the words after `herd run [OPTIONS]`. `arg_files` (`-a FILE`)
/// come first, as sources of their own. Inputs and file names may be any
/// bytes; the command's own words must be UTF-8.
pub(crate) fn split(words: &[OsString], arg_files: &[PathBuf]) -> Result<Split, CliError> {
    let mut sources: Vec<Source> = arg_files
        .iter()
        .map(|p| Source {
            kind: SourceKind::File(p.clone()),
            linked: false,
        })
        .collect();
    let mut command = Vec::new();
    let mut i = 0;
    while i < words.len() && !is_separator(&words[i]) {
        let word = words[i].to_str().ok_or_else(|| {
            CliError::Usage(format!(
                "the command word {:?} is not UTF-8 (inputs after `:::` may be any bytes)",
                words[i]
            ))
        })?;
        command.push(word.to_owned());
        i += 1;
    }
    while i < words.len() {
        let sep = words[i].to_str().unwrap_or_default();
        let linked = sep.ends_with('+');
        let files = sep.starts_with("::::");
        i += 1;
        let start = i;
        while i < words.len() && !is_separator(&words[i]) {
            i += 1;
        }
        let items = &words[start..i];
        if files {
            if items.is_empty() {
                return Err(CliError::Usage(format!("`{sep}` needs at least one file")));
            }
            for (n, path) in items.iter().enumerate() {
                sources.push(Source {
                    kind: SourceKind::File(PathBuf::from(path)),
                    // `::::+ a b`: the first file pairs with the source
                    // before; the rest are sources of their own.
                    linked: linked && n == 0,
                });
            }
        } else {
            sources.push(Source {
                kind: SourceKind::Args(items.iter().map(|s| s.as_bytes().to_vec()).collect()),
                linked,
            });
        }
    }
    if sources.first().is_some_and(|s| s.linked) {
        return Err(CliError::Usage(
            "`:::+` pairs a source with the one before it, and there is none".into(),
        ));
    }
    Ok(Split { command, sources })
}

fn is_separator(word: &OsString) -> bool {
    matches!(word.as_bytes(), b":::" | b":::+" | b"::::" | b"::::+")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &[&str]) -> Vec<OsString> {
        s.iter().map(OsString::from).collect()
    }

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn command_then_sources() {
        let s = split(
            &words(&[
                "echo", "{1}", ":::", "a", "b", "::::", "f1", "f2", ":::+", "x",
            ]),
            &[],
        )
        .unwrap();
        assert_eq!(s.command, strings(&["echo", "{1}"]));
        assert_eq!(s.sources.len(), 4);
        assert_eq!(
            s.sources[0].kind,
            SourceKind::Args(vec![b"a".to_vec(), b"b".to_vec()])
        );
        assert_eq!(s.sources[1].kind, SourceKind::File("f1".into()));
        assert_eq!(s.sources[2].kind, SourceKind::File("f2".into()));
        assert!(s.sources[3].linked);
    }

    #[test]
    fn no_command_and_empty_list() {
        let s = split(&words(&[":::", "echo a"]), &[]).unwrap();
        assert!(s.command.is_empty());
        let s = split(&words(&["true", ":::"]), &[]).unwrap();
        assert_eq!(s.sources[0].kind, SourceKind::Args(vec![]));
        assert!(split(&words(&["true", "::::"]), &[]).is_err());
        assert!(split(&words(&["true", ":::+", "a"]), &[]).is_err());
    }

    #[test]
    fn inputs_and_file_names_need_not_be_utf8() {
        use std::os::unix::ffi::OsStringExt;
        let latin1 = OsString::from_vec(b"caf\xe9".to_vec());
        let w = vec![
            OsString::from("gzip"),
            OsString::from(":::"),
            latin1.clone(),
            OsString::from("::::"),
            latin1.clone(),
        ];
        let s = split(&w, &[]).unwrap();
        assert_eq!(
            s.sources[0].kind,
            SourceKind::Args(vec![b"caf\xe9".to_vec()])
        );
        assert_eq!(
            s.sources[1].kind,
            SourceKind::File(PathBuf::from(latin1.clone()))
        );
        assert!(
            split(&[latin1], &[]).is_err(),
            "a command word must be UTF-8"
        );
    }

    #[test]
    fn arg_files_come_first() {
        let s = split(&words(&["cat", ":::", "a"]), &["in.txt".into()]).unwrap();
        assert_eq!(s.sources[0].kind, SourceKind::File("in.txt".into()));
    }
}
