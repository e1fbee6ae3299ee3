//! The jobs' inputs: every combination of the sources (the last varying
//! fastest), linked sources paired. The first group of sources is read as
//! the jobs start (a million lines on stdin need not sit in memory before
//! the first job runs); the others are read up front, since each of their
//! inputs is used once per input of the groups before them.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};

use crate::CliError;
use crate::cmdline::{Source, SourceKind};

/// One job's inputs: the values of `{1}`, `{2}`, ...
pub(crate) type Tuple = Vec<Vec<u8>>;

type TupleIter = Box<dyn Iterator<Item = io::Result<Tuple>>>;

/// The jobs' inputs, in order.
pub(crate) struct Inputs {
    first: TupleIter,
    rest: Vec<Vec<Tuple>>,
    current: Option<Tuple>,
    odometer: Vec<usize>,
    total: Option<u64>,
    done: bool,
}

impl std::fmt::Debug for Inputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inputs")
            .field("total", &self.total)
            .finish()
    }
}

impl Inputs {
    /// Opens the sources (stdin when there are none). `sep` is `b'\n'` or
    /// `b'\0'`.
    pub(crate) fn open(sources: &[Source], sep: u8) -> Result<Self, CliError> {
        let stdin_only = [Source {
            kind: SourceKind::File("-".into()),
            linked: false,
        }];
        let sources = if sources.is_empty() {
            &stdin_only[..]
        } else {
            sources
        };
        let mut groups: Vec<Vec<&Source>> = Vec::new();
        for s in sources {
            match groups.last_mut() {
                Some(g) if s.linked => g.push(s),
                _ => groups.push(vec![s]),
            }
        }
        let mut rest = Vec::new();
        for g in &groups[1..] {
            rest.push(read_group(g, sep)?);
        }
        let head = &groups[0];
        let (first, first_len): (TupleIter, Option<u64>) =
            if head.len() == 1 && matches!(head[0].kind, SourceKind::File(_)) {
                let lines = open_lines(&head[0].kind, sep)?;
                (Box::new(lines.map(|r| r.map(|v| vec![v]))), None)
            } else {
                let tuples = read_group(head, sep)?;
                let n = tuples.len() as u64;
                (Box::new(tuples.into_iter().map(Ok)), Some(n))
            };
        let rest_len: u64 = rest.iter().map(|g| g.len() as u64).product();
        let odometer = vec![0; rest.len()];
        Ok(Self {
            first,
            total: first_len.map(|n| n * rest_len),
            done: rest.iter().any(|g| g.is_empty()),
            rest,
            current: None,
            odometer,
        })
    }

    /// The number of jobs, when known without reading further.
    pub(crate) fn total(&self) -> Option<u64> {
        self.total
    }

    /// Reads every input now, so the number of jobs is known (for `--bar`
    /// and percentages of all jobs).
    pub(crate) fn materialize(&mut self) -> Result<u64, CliError> {
        if let Some(n) = self.total {
            return Ok(n);
        }
        let first: Vec<Tuple> = std::mem::replace(&mut self.first, Box::new(std::iter::empty()))
            .collect::<io::Result<_>>()
            .map_err(|e| CliError::io("reading the inputs", e))?;
        let rest_len: u64 = self.rest.iter().map(|g| g.len() as u64).product();
        let n = first.len() as u64 * rest_len;
        self.first = Box::new(first.into_iter().map(Ok));
        self.total = Some(n);
        Ok(n)
    }
}

impl Iterator for Inputs {
    type Item = Result<Tuple, CliError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        // Advance the odometer over the later groups; when it wraps (or
        // at the start) take the next tuple of the first group.
        let need_first = match &self.current {
            None => true,
            Some(_) => {
                let mut wrapped = true;
                for i in (0..self.rest.len()).rev() {
                    self.odometer[i] += 1;
                    if self.odometer[i] < self.rest[i].len() {
                        wrapped = false;
                        break;
                    }
                    self.odometer[i] = 0;
                }
                wrapped
            }
        };
        if need_first {
            match self.first.next() {
                None => {
                    self.done = true;
                    return None;
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(CliError::io("reading the inputs", e)));
                }
                Some(Ok(t)) => self.current = Some(t),
            }
        }
        let mut tuple = self.current.clone().unwrap_or_default();
        for (g, &i) in self.rest.iter().zip(&self.odometer) {
            tuple.extend(g[i].iter().cloned());
        }
        Some(Ok(tuple))
    }
}

/// A group's tuples: its sources paired element by element, a shorter
/// source wrapping around (GNU parallel's `--link`).
fn read_group(group: &[&Source], sep: u8) -> Result<Vec<Tuple>, CliError> {
    let mut columns = Vec::new();
    for s in group {
        let values: Vec<Vec<u8>> = match &s.kind {
            SourceKind::Args(a) => a.clone(),
            kind => open_lines(kind, sep)?
                .collect::<io::Result<_>>()
                .map_err(|e| CliError::io("reading the inputs", e))?,
        };
        columns.push(values);
    }
    if columns.iter().any(|c| c.is_empty()) {
        return Ok(Vec::new());
    }
    let len = columns.iter().map(Vec::len).max().unwrap_or(0);
    Ok((0..len)
        .map(|i| columns.iter().map(|c| c[i % c.len()].clone()).collect())
        .collect())
}

fn open_lines(kind: &SourceKind, sep: u8) -> Result<Lines, CliError> {
    let SourceKind::File(path) = kind else {
        unreachable!("only files are read line by line")
    };
    let reader: Box<dyn Read> = if path.as_os_str() == "-" {
        Box::new(io::stdin())
    } else {
        Box::new(
            File::open(path).map_err(|e| CliError::io(format!("opening {}", path.display()), e))?,
        )
    };
    Ok(Lines {
        reader: BufReader::with_capacity(64 * 1024, reader),
        sep,
    })
}

/// One input per line (or per NUL-terminated record).
struct Lines {
    reader: BufReader<Box<dyn Read>>,
    sep: u8,
}

impl Iterator for Lines {
    type Item = io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut line = Vec::new();
        match self.reader.read_until(self.sep, &mut line) {
            Ok(0) => None,
            Ok(_) => {
                if line.last() == Some(&self.sep) {
                    line.pop();
                }
                Some(Ok(line))
            }
            Err(e) => Some(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str], linked: bool) -> Source {
        Source {
            kind: SourceKind::Args(v.iter().map(|s| s.as_bytes().to_vec()).collect()),
            linked,
        }
    }

    fn all(sources: &[Source]) -> Vec<Vec<String>> {
        Inputs::open(sources, b'\n')
            .unwrap()
            .map(|t| {
                t.unwrap()
                    .into_iter()
                    .map(|v| String::from_utf8(v).unwrap())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn combinations_last_fastest() {
        let got = all(&[args(&["a", "b"], false), args(&["1", "2", "3"], false)]);
        let want: Vec<Vec<String>> = [
            ["a", "1"],
            ["a", "2"],
            ["a", "3"],
            ["b", "1"],
            ["b", "2"],
            ["b", "3"],
        ]
        .iter()
        .map(|p| p.iter().map(|s| s.to_string()).collect())
        .collect();
        assert_eq!(got, want);
        let i = Inputs::open(&[args(&["a", "b"], false), args(&["1", "2"], false)], b'\n').unwrap();
        assert_eq!(i.total(), Some(4));
    }

    #[test]
    fn linked_sources_pair_and_wrap() {
        let got = all(&[args(&["a", "b", "c"], false), args(&["1", "2"], true)]);
        assert_eq!(got, vec![vec!["a", "1"], vec!["b", "2"], vec!["c", "1"]]);
    }

    #[test]
    fn an_empty_source_means_no_jobs() {
        assert!(all(&[args(&["a"], false), args(&[], false)]).is_empty());
        assert!(all(&[args(&[], false), args(&["a"], false)]).is_empty());
    }

    #[test]
    fn lines_from_a_file_nul_and_newline() {
        let dir = std::env::temp_dir().join(format!("herd-input-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("in");
        std::fs::write(&p, b"a b\n\nc\n").unwrap();
        let f = Source {
            kind: SourceKind::File(p.clone()),
            linked: false,
        };
        assert_eq!(all(std::slice::from_ref(&f)), vec![vec!["a b"], vec![""], vec!["c"]]);
        std::fs::write(&p, b"x\ny\0z").unwrap();
        let got: Vec<Tuple> = Inputs::open(&[f], b'\0')
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(got, vec![vec![b"x\ny".to_vec()], vec![b"z".to_vec()]]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
