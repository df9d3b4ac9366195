//! Where each node of a YAML file is, by path (`pipelines[0].connectors[1].settings.path`).
//!
//! The YAML parser reports positions for syntax and type errors only; errors found later (an
//! unknown plugin, a bad setting, a duplicate id) need the line of the offending item. This module
//! scans the text once, after it parsed successfully, and records the line and column of every
//! mapping key and sequence item written in block style. Nodes it cannot place (inside flow
//! collections `{...}`/`[...]`, merged with `<<`) resolve to their nearest placed ancestor.

use std::collections::HashMap;
use std::fmt;

/// One step of a path: a mapping key or a sequence index.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Segment {
    /// A mapping key.
    Key(String),
    /// A sequence index.
    Index(usize),
}

/// A path from a document's root, displayed like `pipelines[0].connectors[1].settings`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct YamlPath(pub Vec<Segment>);

impl YamlPath {
    /// The root path.
    pub fn root() -> Self {
        YamlPath(Vec::new())
    }

    /// This path extended by a key.
    pub fn key(&self, key: impl Into<String>) -> Self {
        let mut p = self.clone();
        p.0.push(Segment::Key(key.into()));
        p
    }

    /// This path extended by an index.
    pub fn index(&self, index: usize) -> Self {
        let mut p = self.clone();
        p.0.push(Segment::Index(index));
        p
    }
}

impl fmt::Display for YamlPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str(".");
        }
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Segment::Key(k) if i == 0 => write!(f, "{k}")?,
                Segment::Key(k) => write!(f, ".{k}")?,
                Segment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pos {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

/// Positions of the nodes of every document in a YAML stream.
#[derive(Debug, Default)]
pub struct YamlIndex {
    /// Per document (in stream order, counting only documents with content): path → position.
    docs: Vec<HashMap<YamlPath, Pos>>,
}

impl YamlIndex {
    /// Scans `text`.
    pub fn build(text: &str) -> Self {
        Scanner::default().run(text)
    }

    /// The position of `path` in document `doc`, or of its nearest ancestor that was placed.
    pub fn locate(&self, doc: usize, path: &YamlPath) -> Option<Pos> {
        let nodes = self.docs.get(doc)?;
        let mut p = path.0.clone();
        loop {
            if let Some(pos) = nodes.get(&YamlPath(p.clone())) {
                return Some(*pos);
            }
            p.pop()?;
        }
    }

    /// How many documents with content the stream has.
    pub fn document_count(&self) -> usize {
        self.docs.len()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Map,
    Seq,
}

#[derive(Debug)]
struct Container {
    indent: usize,
    kind: Kind,
    path: YamlPath,
    next_index: usize,
}

/// A node that may get children on the next lines: `key:` or `-` with nothing after it.
#[derive(Debug)]
struct Pending {
    indent: usize,
    path: YamlPath,
}

#[derive(Default)]
struct Scanner {
    index: YamlIndex,
    stack: Vec<Container>,
    pending: Option<Pending>,
    /// Lines indented more than this continue a scalar (block, multi-line plain or quoted) or a
    /// flow collection and hold no nodes of their own.
    continuation_indent: Option<usize>,
    doc_has_content: bool,
}

impl Scanner {
    fn run(mut self, text: &str) -> YamlIndex {
        for (i, line) in text.lines().enumerate() {
            self.line(i + 1, line);
        }
        self.index
    }

    fn line(&mut self, line_no: usize, line: &str) {
        let trimmed = line.trim_start_matches(' ');
        let indent = line.len() - trimmed.len();
        let content = trimmed.trim_end();
        if let Some(ci) = self.continuation_indent {
            if content.is_empty() || indent > ci {
                return;
            }
            self.continuation_indent = None;
        }
        if content.is_empty() || content.starts_with('#') {
            return;
        }
        if indent == 0 && (content.starts_with("---") || content.starts_with("...")) {
            let rest = content.get(3..).unwrap_or("");
            if rest.is_empty() || rest.starts_with(' ') {
                if content.starts_with("---") && self.doc_has_content {
                    self.doc_has_content = false;
                }
                self.stack.clear();
                self.pending = None;
                return;
            }
        }
        if indent == 0 && content.starts_with('%') {
            return;
        }
        if !self.doc_has_content {
            self.doc_has_content = true;
            self.index.docs.push(HashMap::new());
            self.stack.push(Container {
                indent,
                kind: if is_seq_item(content) {
                    Kind::Seq
                } else {
                    Kind::Map
                },
                path: YamlPath::root(),
                next_index: 0,
            });
        }
        self.node(line_no, indent, content);
    }

    /// Handles the node starting at column `indent` (0-based) with text `content`.
    fn node(&mut self, line_no: usize, indent: usize, content: &str) {
        let seq = is_seq_item(content);
        if let Some(p) = self.pending.take() {
            if indent > p.indent || (indent == p.indent && seq) {
                self.stack.push(Container {
                    indent,
                    kind: if seq { Kind::Seq } else { Kind::Map },
                    path: p.path,
                    next_index: 0,
                });
            }
        }
        while self.stack.len() > 1 && self.stack.last().is_some_and(|c| c.indent > indent) {
            self.stack.pop();
        }
        // A key after a sequence written at its parent key's indent (`key:\n- item\nnext: ..`)
        // ends that sequence.
        if !seq
            && self.stack.len() > 1
            && self
                .stack
                .last()
                .is_some_and(|c| c.indent == indent && c.kind == Kind::Seq)
        {
            self.stack.pop();
        }
        let Some(top) = self.stack.last_mut() else {
            return;
        };
        if top.indent != indent {
            return;
        }
        if seq {
            if top.kind != Kind::Seq {
                return;
            }
            let path = top.path.index(top.next_index);
            top.next_index += 1;
            self.place(&path, line_no, indent);
            let after = &content[1..];
            let rest = after.trim_start_matches(' ');
            let rest_indent = indent + 1 + (after.len() - rest.len());
            if rest.is_empty() || rest.starts_with('#') {
                self.pending = Some(Pending { indent, path });
            } else if is_seq_item(rest) || split_key(rest).is_some() {
                self.stack.push(Container {
                    indent: rest_indent,
                    kind: if is_seq_item(rest) {
                        Kind::Seq
                    } else {
                        Kind::Map
                    },
                    path,
                    next_index: 0,
                });
                self.node(line_no, rest_indent, rest);
            } else {
                self.continuation_indent = Some(indent);
            }
            return;
        }
        let Some((key, value)) = split_key(content) else {
            self.continuation_indent = Some(indent);
            return;
        };
        if top.kind != Kind::Map {
            return;
        }
        let path = top.path.key(key);
        self.place(&path, line_no, indent);
        if value.is_empty() || value.starts_with('#') {
            self.pending = Some(Pending { indent, path });
        } else {
            self.continuation_indent = Some(indent);
        }
    }

    fn place(&mut self, path: &YamlPath, line: usize, indent: usize) {
        if let Some(doc) = self.index.docs.last_mut() {
            doc.entry(path.clone()).or_insert(Pos {
                line,
                column: indent + 1,
            });
        }
    }
}

fn is_seq_item(content: &str) -> bool {
    content == "-" || content.starts_with("- ")
}

/// Splits `key: value` (or `key:`) into the unquoted key and the trimmed value text.
fn split_key(content: &str) -> Option<(String, &str)> {
    let first = content.chars().next()?;
    if first == '"' || first == '\'' {
        let close = content[1..].find(first)? + 1;
        let key = content[1..close].to_string();
        let after = content[close + 1..].trim_start_matches(' ');
        let value = after.strip_prefix(':')?;
        if !(value.is_empty() || value.starts_with(' ')) {
            return None;
        }
        return Some((key, value.trim()));
    }
    if matches!(
        first,
        '{' | '[' | '&' | '*' | '!' | '|' | '>' | '%' | '@' | '`' | '#' | '?'
    ) {
        return None;
    }
    let bytes = content.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b':' && matches!(bytes.get(i + 1), None | Some(b' ')) {
            let key = content[..i].trim_end().to_string();
            return Some((key, content[i + 1..].trim()));
        }
        if b == b'#' && i > 0 && bytes[i - 1] == b' ' {
            return None;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(s: &str) -> YamlPath {
        let mut p = YamlPath::root();
        for part in s.split('.') {
            let (name, idx) = match part.split_once('[') {
                Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
                None => (part, None),
            };
            if !name.is_empty() {
                p = p.key(name);
            }
            if let Some(i) = idx {
                p = p.index(i);
            }
        }
        p
    }

    const FILE: &str = "\
version: 2.2   # comment
pipelines:
  - id: p1
    status: running
    description: >
      a folded
      text: not a key
    connectors:
    - id: src
      type: source
      settings:
        path: ./in.txt
        \"sdk.batch.size\": 10
    - id: dst
      type: destination
      settings: {path: ./out.txt}
      processors:
        -   id: proc
            plugin: x
    dead-letter-queue:
      plugin: builtin:log
  - id: p2
    connectors: []
";

    #[test]
    fn places_keys_and_items() {
        let idx = YamlIndex::build(FILE);
        let at = |p: &str| idx.locate(0, &path(p)).map(|p| (p.line, p.column));
        assert_eq!(at("version"), Some((1, 1)));
        assert_eq!(at("pipelines[0]"), Some((3, 3)));
        assert_eq!(at("pipelines[0].id"), Some((3, 5)));
        assert_eq!(at("pipelines[0].status"), Some((4, 5)));
        assert_eq!(at("pipelines[0].connectors[0]"), Some((9, 5)));
        assert_eq!(
            at("pipelines[0].connectors[0].settings.path"),
            Some((12, 9))
        );
        assert_eq!(
            idx.locate(
                0,
                &path("pipelines[0].connectors[0].settings").key("sdk.batch.size")
            )
            .map(|p| p.line),
            Some(13)
        );
        assert_eq!(at("pipelines[0].connectors[1].type"), Some((15, 7)));
        // Inside a flow mapping: falls back to the mapping's key.
        assert_eq!(
            at("pipelines[0].connectors[1].settings.path"),
            Some((16, 7))
        );
        assert_eq!(
            at("pipelines[0].connectors[1].processors[0].plugin"),
            Some((19, 13))
        );
        assert_eq!(at("pipelines[0].dead-letter-queue.plugin"), Some((21, 7)));
        assert_eq!(at("pipelines[1].id"), Some((22, 5)));
        // The folded text's "text: not a key" is not a node.
        assert_eq!(at("pipelines[0].description.text"), Some((5, 5)));
    }

    #[test]
    fn separates_documents() {
        let text = "---\nversion: 2.2\npipelines:\n- id: a\n---\n# second\npipelines:\n- id: b\n";
        let idx = YamlIndex::build(text);
        assert_eq!(idx.document_count(), 2);
        assert_eq!(
            idx.locate(0, &path("pipelines[0].id")).map(|p| p.line),
            Some(4)
        );
        assert_eq!(
            idx.locate(1, &path("pipelines[0].id")).map(|p| p.line),
            Some(8)
        );
        assert_eq!(
            idx.locate(1, &path("pipelines")),
            Some(Pos { line: 7, column: 1 })
        );
        // Not in the second document, and the root itself has no position.
        assert_eq!(idx.locate(1, &path("version")), None);
    }

    #[test]
    fn nested_sequences_and_empty_items() {
        let text = "a:\n  -\n    b: 1\n  - - x\n    - y\n";
        let idx = YamlIndex::build(text);
        assert_eq!(idx.locate(0, &path("a[0].b")).map(|p| p.line), Some(3));
        assert_eq!(
            idx.locate(0, &path("a").index(1).index(1)).map(|p| p.line),
            Some(5)
        );
        assert_eq!(
            idx.locate(0, &path("a").index(1).index(0)).map(|p| p.line),
            Some(4)
        );
    }

    #[test]
    fn displays_paths_like_serde_yaml() {
        assert_eq!(
            path("pipelines[0].connectors[1].settings").to_string(),
            "pipelines[0].connectors[1].settings"
        );
        assert_eq!(YamlPath::root().to_string(), ".");
    }
}
