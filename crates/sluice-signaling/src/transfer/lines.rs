//! Turning received bytes into line records whose positions are byte offsets, the same records
//! the `file` source makes: a line's payload is its bytes without `\n`, its position the decimal
//! offset right after its `\n`. Writing them with a `lines` destination restores the bytes exactly.

use bytes::{Bytes, BytesMut};
use sluice_sdk::{Position, Record};

/// Appends the complete lines of `data` (which starts at stream offset `start`) to `out`, as
/// zero-copy slices; returns the bytes after the last `\n` (a partial line).
pub fn split_lines(data: &Bytes, start: u64, out: &mut Vec<Record>) -> Bytes {
    let mut from = 0;
    for at in memchr::memchr_iter(b'\n', data) {
        out.push(Record::new(
            Position::from_u64(start + at as u64 + 1),
            data.slice(from..at),
        ));
        from = at + 1;
    }
    data.slice(from..)
}

/// Splits a byte stream arriving in chunks into line records.
#[derive(Debug, Default)]
pub struct LineSplitter {
    /// A partial line carried over from earlier chunks.
    partial: BytesMut,
    /// Stream offset of the next byte to arrive.
    offset: u64,
}

impl LineSplitter {
    /// A splitter whose next byte is at stream offset `offset`.
    pub fn at(offset: u64) -> Self {
        LineSplitter {
            partial: BytesMut::new(),
            offset,
        }
    }

    /// Stream offset of the next byte to arrive.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Takes a chunk; appends every line it completes to `out`.
    pub fn push(&mut self, chunk: Bytes, out: &mut Vec<Record>) {
        let chunk_start = self.offset;
        self.offset += chunk.len() as u64;
        if self.partial.is_empty() {
            let rest = split_lines(&chunk, chunk_start, out);
            self.partial.extend_from_slice(&rest);
            return;
        }
        let Some(first_nl) = memchr::memchr(b'\n', &chunk) else {
            self.partial.extend_from_slice(&chunk);
            return;
        };
        // Complete the carried line, then split the rest of the chunk without copying.
        self.partial.extend_from_slice(&chunk[..first_nl]);
        let line = std::mem::take(&mut self.partial).freeze();
        out.push(Record::new(
            Position::from_u64(chunk_start + first_nl as u64 + 1),
            line,
        ));
        let rest = chunk.slice(first_nl + 1..);
        let tail = split_lines(&rest, chunk_start + first_nl as u64 + 1, out);
        self.partial.extend_from_slice(&tail);
    }

    /// The stream ended: a last line without `\n`, if any.
    pub fn finish(&mut self, out: &mut Vec<Record>) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial).freeze();
            out.push(Record::new(Position::from_u64(self.offset), line));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(records: &[Record]) -> Vec<(String, u64)> {
        records
            .iter()
            .map(|r| {
                let p = r.payload.after.as_ref().expect("payload").to_bytes();
                (
                    String::from_utf8_lossy(&p).into_owned(),
                    r.position.to_u64().expect("offset"),
                )
            })
            .collect()
    }

    #[test]
    fn lines_span_chunks_and_keep_offsets() {
        let mut s = LineSplitter::at(10);
        let mut out = Vec::new();
        s.push(Bytes::from_static(b"ab\nc"), &mut out);
        s.push(Bytes::from_static(b"d"), &mut out);
        s.push(Bytes::from_static(b"e\n\nf"), &mut out);
        s.finish(&mut out);
        assert_eq!(
            show(&out),
            vec![
                ("ab".into(), 13),
                ("cde".into(), 17),
                ("".into(), 18),
                ("f".into(), 19)
            ]
        );
    }
}
