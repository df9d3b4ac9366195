//! Splitting read buffers into lines without copying: each line is a [`Bytes`] slice of a frozen
//! chunk, so handing out a record costs a reference count, not a copy.

use bytes::{Bytes, BytesMut};

/// One line of the file.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Line {
    /// The line's bytes, without its `\n` (a `\r` before it is kept).
    pub bytes: Bytes,
    /// File offset of the line's first byte.
    pub start: u64,
    /// File offset right after the line's `\n`: where reading resumes after this line.
    pub end: u64,
}

/// A frozen chunk holding only complete lines, and a cursor over them.
#[derive(Debug, Default)]
pub(crate) struct LineChunk {
    data: Bytes,
    cursor: usize,
    start: u64,
}

impl LineChunk {
    /// A chunk whose first byte is at file offset `start`; `data` must end with `\n` (or be empty).
    pub fn new(data: Bytes, start: u64) -> Self {
        debug_assert!(data.last().is_none_or(|&b| b == b'\n'));
        LineChunk {
            data,
            cursor: 0,
            start,
        }
    }

    /// The next line, or `None` once every line was handed out.
    pub fn next_line(&mut self) -> Option<Line> {
        let rest = self.data.get(self.cursor..)?;
        let len = memchr::memchr(b'\n', rest)?;
        let from = self.cursor;
        self.cursor = from + len + 1;
        Some(Line {
            bytes: self.data.slice(from..from + len),
            start: self.start + from as u64,
            end: self.start + self.cursor as u64,
        })
    }
}

/// Splits off and freezes `buf`'s complete lines: everything up to and including its last `\n`.
/// Only `buf[scan_from..]` is searched (the bytes before it are known to hold no `\n`). Returns
/// `None`, leaving `buf` untouched, when there is no complete line.
pub(crate) fn split_complete_lines(buf: &mut BytesMut, scan_from: usize) -> Option<Bytes> {
    let tail = buf.get(scan_from..)?;
    let last = memchr::memrchr(b'\n', tail)?;
    Some(buf.split_to(scan_from + last + 1).freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_carry_their_offsets() {
        let mut chunk = LineChunk::new(Bytes::from_static(b"ab\n\nc\r\n"), 100);
        let a = chunk.next_line().expect("a");
        assert_eq!((&a.bytes[..], a.start, a.end), (&b"ab"[..], 100, 103));
        let empty = chunk.next_line().expect("empty");
        assert_eq!(
            (&empty.bytes[..], empty.start, empty.end),
            (&b""[..], 103, 104)
        );
        let c = chunk.next_line().expect("c");
        assert_eq!((&c.bytes[..], c.start, c.end), (&b"c\r"[..], 104, 107));
        assert_eq!(chunk.next_line(), None);
        assert_eq!(chunk.next_line(), None);
    }

    #[test]
    fn split_keeps_the_partial_tail() {
        let mut buf = BytesMut::from(&b"one\ntwo\nthr"[..]);
        let lines = split_complete_lines(&mut buf, 0).expect("two lines");
        assert_eq!(&lines[..], b"one\ntwo\n");
        assert_eq!(&buf[..], b"thr");
        assert_eq!(split_complete_lines(&mut buf, 0), None);
        assert_eq!(&buf[..], b"thr");
        buf.extend_from_slice(b"ee\n");
        assert_eq!(
            split_complete_lines(&mut buf, 3).as_deref(),
            Some(&b"three\n"[..])
        );
        assert!(buf.is_empty());
    }
}
