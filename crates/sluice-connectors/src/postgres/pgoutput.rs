//! A decoder for the messages of PostgreSQL's `pgoutput` logical decoding plugin, protocol
//! version 1: transactions (`Begin`/`Commit`), table descriptions (`Relation`) and row changes
//! (`Insert`/`Update`/`Delete`) whose values are in text format.

use bytes::{Buf, Bytes};

use super::lsn::Lsn;

/// One column value of a row as pgoutput sends it.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A TOASTed value that did not change (not sent).
    Unchanged,
    /// The value in the type's text format.
    Text(Bytes),
}

/// One column of a [`Relation`].
#[derive(Clone, Debug, PartialEq)]
pub struct RelationColumn {
    /// True if the column is part of the replica identity (the key).
    pub key: bool,
    /// Column name.
    pub name: String,
    /// The column type's OID.
    pub type_oid: u32,
}

/// A table as pgoutput describes it before the first change to it (and after a schema change).
#[derive(Clone, Debug, PartialEq)]
pub struct Relation {
    /// The table's OID.
    pub id: u32,
    /// Schema name.
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// Replica identity: `d` default (primary key), `n` nothing, `f` full, `i` an index.
    pub replica_identity: u8,
    /// The columns, in order.
    pub columns: Vec<RelationColumn>,
}

/// The old row of an update or delete, when the table's replica identity provides one.
#[derive(Clone, Debug, PartialEq)]
pub enum OldRow {
    /// Only the replica identity (key) columns; the others are NULL.
    Key(Vec<Value>),
    /// The whole old row (`REPLICA IDENTITY FULL`).
    Full(Vec<Value>),
}

/// One decoded pgoutput message.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// A transaction starts.
    Begin {
        /// The LSN of the transaction's commit record.
        final_lsn: Lsn,
        /// Commit time, microseconds since 2000-01-01 UTC.
        commit_time: i64,
        /// Transaction id.
        xid: u32,
    },
    /// A transaction ends.
    Commit {
        /// The LSN of the commit record.
        commit_lsn: Lsn,
        /// The LSN just past the commit record.
        end_lsn: Lsn,
        /// Commit time, microseconds since 2000-01-01 UTC.
        commit_time: i64,
    },
    /// A table description.
    Relation(Relation),
    /// A new row.
    Insert {
        /// The table's OID.
        relation: u32,
        /// The row.
        new: Vec<Value>,
    },
    /// A changed row.
    Update {
        /// The table's OID.
        relation: u32,
        /// The old row or key, when the replica identity provides it.
        old: Option<OldRow>,
        /// The new row.
        new: Vec<Value>,
    },
    /// A removed row.
    Delete {
        /// The table's OID.
        relation: u32,
        /// The old row or key.
        old: OldRow,
    },
    /// Tables were truncated.
    Truncate {
        /// The tables' OIDs.
        relations: Vec<u32>,
    },
    /// Something this decoder does not turn into records (origin, type, logical message).
    Other(u8),
}

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("malformed pgoutput message ({0})")]
pub struct DecodeError(pub String);

/// Decodes one pgoutput message.
pub fn decode(data: &Bytes) -> Result<Message, DecodeError> {
    let mut r = Reader { buf: data.clone() };
    let tag = r.u8()?;
    Ok(match tag {
        b'B' => Message::Begin {
            final_lsn: Lsn(r.u64()?),
            commit_time: r.i64()?,
            xid: r.u32()?,
        },
        b'C' => {
            let _flags = r.u8()?;
            Message::Commit {
                commit_lsn: Lsn(r.u64()?),
                end_lsn: Lsn(r.u64()?),
                commit_time: r.i64()?,
            }
        }
        b'R' => {
            let id = r.u32()?;
            let namespace = r.cstr()?;
            let name = r.cstr()?;
            let replica_identity = r.u8()?;
            let n = r.i16()?;
            let mut columns = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
            for _ in 0..n {
                let flags = r.u8()?;
                let name = r.cstr()?;
                let type_oid = r.u32()?;
                let _typmod = r.i32()?;
                columns.push(RelationColumn {
                    key: flags & 1 == 1,
                    name,
                    type_oid,
                });
            }
            Message::Relation(Relation {
                id,
                namespace: if namespace.is_empty() {
                    "pg_catalog".into()
                } else {
                    namespace
                },
                name,
                replica_identity,
                columns,
            })
        }
        b'I' => {
            let relation = r.u32()?;
            r.expect(b'N')?;
            Message::Insert {
                relation,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let relation = r.u32()?;
            let old = match r.u8()? {
                b'K' => {
                    let t = r.tuple()?;
                    r.expect(b'N')?;
                    Some(OldRow::Key(t))
                }
                b'O' => {
                    let t = r.tuple()?;
                    r.expect(b'N')?;
                    Some(OldRow::Full(t))
                }
                b'N' => None,
                other => {
                    return Err(DecodeError(format!(
                        "update with unknown tuple kind {:?}",
                        other as char
                    )))
                }
            };
            Message::Update {
                relation,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let relation = r.u32()?;
            let old = match r.u8()? {
                b'K' => OldRow::Key(r.tuple()?),
                b'O' => OldRow::Full(r.tuple()?),
                other => {
                    return Err(DecodeError(format!(
                        "delete with unknown tuple kind {:?}",
                        other as char
                    )))
                }
            };
            Message::Delete { relation, old }
        }
        b'T' => {
            let n = r.i32()?;
            let _options = r.u8()?;
            let mut relations = Vec::with_capacity(usize::try_from(n).unwrap_or(0).min(1024));
            for _ in 0..n {
                relations.push(r.u32()?);
            }
            Message::Truncate { relations }
        }
        other => Message::Other(other),
    })
}

struct Reader {
    buf: Bytes,
}

impl Reader {
    fn need(&self, n: usize, what: &str) -> Result<(), DecodeError> {
        if self.buf.remaining() < n {
            Err(DecodeError(format!("truncated {what}")))
        } else {
            Ok(())
        }
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1, "byte")?;
        Ok(self.buf.get_u8())
    }

    fn i16(&mut self) -> Result<i16, DecodeError> {
        self.need(2, "int16")?;
        Ok(self.buf.get_i16())
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        self.need(4, "int32")?;
        Ok(self.buf.get_i32())
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4, "int32")?;
        Ok(self.buf.get_u32())
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        self.need(8, "int64")?;
        Ok(self.buf.get_i64())
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.need(8, "int64")?;
        Ok(self.buf.get_u64())
    }

    fn cstr(&mut self) -> Result<String, DecodeError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| DecodeError("unterminated string".into()))?;
        let s = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.advance(end + 1);
        Ok(s)
    }

    fn expect(&mut self, tag: u8) -> Result<(), DecodeError> {
        let got = self.u8()?;
        if got == tag {
            Ok(())
        } else {
            Err(DecodeError(format!(
                "expected {:?}, found {:?}",
                tag as char, got as char
            )))
        }
    }

    fn tuple(&mut self) -> Result<Vec<Value>, DecodeError> {
        let n = self.i16()?;
        let mut values = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
        for _ in 0..n {
            values.push(match self.u8()? {
                b'n' => Value::Null,
                b'u' => Value::Unchanged,
                b't' | b'b' => {
                    let len = usize::try_from(self.i32()?)
                        .map_err(|_| DecodeError("negative value length".into()))?;
                    self.need(len, "value")?;
                    Value::Text(self.buf.split_to(len))
                }
                other => {
                    return Err(DecodeError(format!(
                        "unknown value kind {:?}",
                        other as char
                    )))
                }
            });
        }
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, BytesMut};

    use super::*;

    fn tuple(b: &mut BytesMut, values: &[Option<&str>]) {
        b.put_i16(values.len() as i16);
        for v in values {
            match v {
                None => b.put_u8(b'n'),
                Some(t) => {
                    b.put_u8(b't');
                    b.put_i32(t.len() as i32);
                    b.put_slice(t.as_bytes());
                }
            }
        }
    }

    #[test]
    fn decodes_a_transaction() {
        let mut b = BytesMut::new();
        b.put_u8(b'B');
        b.put_u64(0x1_0000_0010);
        b.put_i64(42);
        b.put_u32(7);
        assert_eq!(
            decode(&b.split().freeze()),
            Ok(Message::Begin {
                final_lsn: Lsn(0x1_0000_0010),
                commit_time: 42,
                xid: 7
            })
        );

        b.put_u8(b'R');
        b.put_u32(16384);
        b.put_slice(b"public\0users\0");
        b.put_u8(b'd');
        b.put_i16(2);
        b.put_u8(1);
        b.put_slice(b"id\0");
        b.put_u32(23);
        b.put_i32(-1);
        b.put_u8(0);
        b.put_slice(b"name\0");
        b.put_u32(25);
        b.put_i32(-1);
        let Ok(Message::Relation(rel)) = decode(&b.split().freeze()) else {
            panic!("relation")
        };
        assert_eq!(rel.name, "users");
        assert_eq!(rel.columns.len(), 2);
        assert!(rel.columns[0].key && !rel.columns[1].key);

        b.put_u8(b'U');
        b.put_u32(16384);
        b.put_u8(b'O');
        tuple(&mut b, &[Some("1"), Some("old")]);
        b.put_u8(b'N');
        tuple(&mut b, &[Some("1"), None]);
        assert_eq!(
            decode(&b.split().freeze()),
            Ok(Message::Update {
                relation: 16384,
                old: Some(OldRow::Full(vec![
                    Value::Text(Bytes::from_static(b"1")),
                    Value::Text(Bytes::from_static(b"old"))
                ])),
                new: vec![Value::Text(Bytes::from_static(b"1")), Value::Null],
            })
        );

        b.put_u8(b'D');
        b.put_u32(16384);
        b.put_u8(b'K');
        tuple(&mut b, &[Some("1"), None]);
        assert!(matches!(
            decode(&b.split().freeze()),
            Ok(Message::Delete {
                old: OldRow::Key(_),
                ..
            })
        ));

        b.put_u8(b'C');
        b.put_u8(0);
        b.put_u64(0x1_0000_0010);
        b.put_u64(0x1_0000_0040);
        b.put_i64(42);
        assert_eq!(
            decode(&b.split().freeze()),
            Ok(Message::Commit {
                commit_lsn: Lsn(0x1_0000_0010),
                end_lsn: Lsn(0x1_0000_0040),
                commit_time: 42
            })
        );
    }

    #[test]
    fn rejects_truncated_messages() {
        let mut b = BytesMut::new();
        b.put_u8(b'I');
        b.put_u32(1);
        b.put_u8(b'N');
        b.put_i16(1);
        b.put_u8(b't');
        b.put_i32(10);
        b.put_slice(b"abc");
        assert!(decode(&b.freeze()).is_err());
        assert!(decode(&Bytes::new()).is_err());
    }
}
