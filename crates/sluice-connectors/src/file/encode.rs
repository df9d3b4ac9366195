//! Turning a record into one line of the destination file, or saying why it cannot be one.

use sluice_sdk::{Data, Record};

use super::config::Format;

/// Appends `record` as one `\n`-terminated line to `out`, or returns why it cannot be written
/// (then `out` is left as it was). Only `lines` format can refuse a record.
pub(crate) fn encode(format: Format, record: &Record, out: &mut Vec<u8>) -> Result<(), String> {
    let mark = out.len();
    let result = match format {
        Format::Lines => encode_payload(record, out),
        Format::OpenCdc => {
            sluice_sdk::opencdc::write_json(record, out);
            Ok(())
        }
    };
    match result {
        Ok(()) => {
            out.push(b'\n');
            Ok(())
        }
        Err(reason) => {
            out.truncate(mark);
            Err(reason)
        }
    }
}

/// `payload.after` as is (raw) or as compact JSON (structured).
fn encode_payload(record: &Record, out: &mut Vec<u8>) -> Result<(), String> {
    match &record.payload.after {
        None => Err(
            "the record has no payload.after, which is what the lines format writes \
             (use format: opencdc to keep whole records)"
                .into(),
        ),
        Some(Data::Raw(bytes)) => match memchr::memchr(b'\n', bytes) {
            Some(at) => Err(format!(
                "payload.after contains a newline (at byte {at}), which the lines format cannot \
                 represent (use format: opencdc)"
            )),
            None => {
                out.extend_from_slice(bytes);
                Ok(())
            }
        },
        // Compact JSON escapes every newline inside strings, so it is always one line.
        Some(Data::Structured(map)) => serde_json::to_writer(&mut *out, map)
            .map_err(|e| format!("payload.after cannot be written as JSON: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_sdk::{Payload, Position};

    #[test]
    fn lines_writes_raw_and_structured_payloads() {
        let mut out = Vec::new();
        encode(
            Format::Lines,
            &Record::new(Position::from_u64(1), "a\rb"),
            &mut out,
        )
        .expect("raw");
        let mut map = serde_json::Map::new();
        map.insert("k".into(), serde_json::Value::String("x\ny".into()));
        let r = Record::new(Position::from_u64(2), Data::Structured(map));
        encode(Format::Lines, &r, &mut out).expect("structured");
        assert_eq!(out, b"a\rb\n{\"k\":\"x\\ny\"}\n");
    }

    #[test]
    fn lines_refuses_what_it_cannot_represent_and_leaves_the_buffer_alone() {
        let mut out = b"kept\n".to_vec();
        let reason = encode(
            Format::Lines,
            &Record::new(Position::from_u64(1), "two\nlines"),
            &mut out,
        )
        .expect_err("newline");
        assert!(reason.contains("newline"), "{reason}");
        let mut r = Record::new(Position::from_u64(1), "x");
        r.payload = Payload::default();
        let reason = encode(Format::Lines, &r, &mut out).expect_err("no payload");
        assert!(reason.contains("payload.after"), "{reason}");
        assert_eq!(out, b"kept\n");
    }

    #[test]
    fn opencdc_writes_one_decodable_line() {
        let r = Record::new(Position::from_u64(7), "multi\nline");
        let mut out = Vec::new();
        encode(Format::OpenCdc, &r, &mut out).expect("opencdc");
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(out.last(), Some(&b'\n'));
        let back = sluice_sdk::opencdc::from_json(&out[..out.len() - 1]).expect("decodes");
        assert_eq!(back, r);
    }
}
