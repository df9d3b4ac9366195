//! Integration tests of the `file` connector through the SDK traits.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use sluice_connectors::file::FilePlugin;
use sluice_sdk::{
    ConnectorError, Data, Destination, Operation, Plugin, Position, ProgressUnit, Record, Settings,
    Source,
};

fn settings(path: &Path, extra: &[(&str, &str)]) -> Settings {
    let mut s = Settings::new();
    s.insert("path".into(), path.display().to_string());
    for (k, v) in extra {
        s.insert(k.to_string(), v.to_string());
    }
    s
}

async fn open_source(
    path: &Path,
    extra: &[(&str, &str)],
    position: Option<&Position>,
) -> Result<Box<dyn Source>, ConnectorError> {
    let mut src = FilePlugin.new_source().expect("file has a source side");
    src.configure(&settings(path, extra)).await?;
    src.open(position).await?;
    Ok(src)
}

async fn open_destination(path: &Path, extra: &[(&str, &str)]) -> Box<dyn Destination> {
    let mut dst = FilePlugin
        .new_destination()
        .expect("file has a destination side");
    dst.configure(&settings(path, extra))
        .await
        .expect("configure");
    dst.open().await.expect("open");
    dst
}

/// Reads until end of stream, `max` records per call.
async fn read_all(src: &mut dyn Source, max: usize) -> Vec<Record> {
    let mut out = Vec::new();
    loop {
        let batch = src.read(max).await.expect("read");
        assert!(batch.records.len() <= max);
        out.extend(batch.records);
        if batch.end_of_stream {
            return out;
        }
    }
}

fn payloads(records: &[Record]) -> Vec<Vec<u8>> {
    records
        .iter()
        .map(|r| match &r.payload.after {
            Some(Data::Raw(b)) => b.to_vec(),
            other => panic!("expected a raw payload, got {other:?}"),
        })
        .collect()
}

fn offsets(records: &[Record]) -> Vec<u64> {
    records
        .iter()
        .map(|r| r.position.to_u64().expect("decimal offset"))
        .collect()
}

fn append(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open for append");
    f.write_all(bytes).expect("append");
}

fn temp_file(content: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("input.txt");
    std::fs::write(&path, content).expect("write input");
    (dir, path)
}

#[tokio::test]
async fn source_reads_lines_in_order_with_byte_offsets() {
    let (_d, path) = temp_file(b"alpha\nbeta\n\ngamma\n");
    let mut src = open_source(&path, &[], None).await.expect("open");
    let records = read_all(src.as_mut(), 100).await;
    assert_eq!(
        payloads(&records),
        vec![
            b"alpha".to_vec(),
            b"beta".to_vec(),
            b"".to_vec(),
            b"gamma".to_vec()
        ]
    );
    assert_eq!(offsets(&records), vec![6, 11, 12, 18]);
    for r in &records {
        assert_eq!(r.operation, Operation::Create);
        assert!(r.metadata.is_empty(), "lines records carry no metadata");
        assert_eq!(r.key, None);
        assert_eq!(r.payload.before, None);
    }
    let progress = src.progress().expect("progress");
    assert_eq!(progress.unit, ProgressUnit::Bytes);
    assert_eq!((progress.done, progress.total), (18, Some(18)));
    // End of stream is sticky.
    let again = src.read(10).await.expect("read after end");
    assert!(again.end_of_stream && again.records.is_empty());
    assert_eq!(
        src.stop().await.expect("stop"),
        Some(Position::from_u64(18))
    );
    src.teardown().await.expect("teardown");
}

#[tokio::test]
async fn source_resumes_exactly_after_each_position() {
    let (_d, path) = temp_file(b"one\ntwo\n\nthree\nfour\nlast-without-newline");
    let mut src = open_source(&path, &[], None).await.expect("open");
    let all = read_all(src.as_mut(), 2).await;
    assert_eq!(all.len(), 6);
    for (i, record) in all.iter().enumerate() {
        let mut resumed = open_source(&path, &[], Some(&record.position))
            .await
            .expect("open at a position");
        let rest = read_all(resumed.as_mut(), 3).await;
        assert_eq!(rest, all[i + 1..].to_vec(), "resume after record {i}");
    }
    // The beginning, as an explicit offset, is valid too.
    let mut from_zero = open_source(&path, &[], Some(&Position::from_u64(0)))
        .await
        .expect("open at 0");
    assert_eq!(read_all(from_zero.as_mut(), 100).await, all);
}

#[tokio::test]
async fn source_emits_a_final_line_without_newline() {
    let (_d, path) = temp_file(b"a\nbc");
    let mut src = open_source(&path, &[], None).await.expect("open");
    let records = read_all(src.as_mut(), 10).await;
    assert_eq!(payloads(&records), vec![b"a".to_vec(), b"bc".to_vec()]);
    assert_eq!(
        offsets(&records),
        vec![2, 4],
        "the last position is the file length"
    );
}

#[tokio::test]
async fn source_keeps_carriage_returns_so_copies_are_byte_identical() {
    let content = b"x\r\ny\r\n\r\nz";
    let (dir, path) = temp_file(content);
    let mut src = open_source(&path, &[], None).await.expect("open");
    let records = read_all(src.as_mut(), 10).await;
    assert_eq!(
        payloads(&records),
        vec![
            b"x\r".to_vec(),
            b"y\r".to_vec(),
            b"\r".to_vec(),
            b"z".to_vec()
        ]
    );
    let out = dir.path().join("copy.txt");
    let mut dst = open_destination(&out, &[]).await;
    dst.write(&records).await.expect("write");
    assert_eq!(dst.ack().await.expect("ack").count, 4);
    dst.teardown().await.expect("teardown");
    // The copy gains only the final newline the source line lacked.
    assert_eq!(
        std::fs::read(&out).expect("read copy"),
        b"x\r\ny\r\n\r\nz\n"
    );
}

fn structured(json: &str) -> Data {
    match serde_json::from_str(json) {
        Ok(serde_json::Value::Object(m)) => Data::Structured(m),
        other => panic!("fixture is not an object: {other:?}"),
    }
}

#[tokio::test]
async fn opencdc_round_trips_through_destination_and_source() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("records.jsonl");
    let mut originals = Vec::new();
    for i in 0..50u64 {
        let mut r = Record::new(
            Position::new(format!("src-{i}").as_bytes()),
            Data::Raw(Bytes::from(format!("line {i}\nwith newline and \0 byte"))),
        );
        r.operation = [
            Operation::Create,
            Operation::Update,
            Operation::Delete,
            Operation::Snapshot,
        ][i as usize % 4];
        if i % 2 == 0 {
            r.key = Some(structured(&format!(
                r#"{{"id":{i},"z":"last","a":"first"}}"#
            )));
            r.payload.before = Some(structured(r#"{"nested":{"x":[1,2.5,null]}}"#));
        } else {
            r.key = Some(Data::Raw(Bytes::from(vec![0u8, 255, i as u8])));
            r.payload.after = None;
        }
        r.metadata
            .insert("opencdc.collection".into(), format!("table{i}"));
        originals.push(r);
    }
    let mut dst = open_destination(&path, &[("format", "opencdc")]).await;
    dst.write(&originals[..20]).await.expect("write");
    dst.write(&originals[20..]).await.expect("write");
    let acks = dst.ack().await.expect("ack");
    assert_eq!((acks.count, acks.nacks.len()), (50, 0));
    dst.teardown().await.expect("teardown");

    let mut src = open_source(&path, &[("format", "opencdc")], None)
        .await
        .expect("open");
    let back = read_all(src.as_mut(), 7).await;
    assert_eq!(back.len(), originals.len());
    let mut previous = 0;
    for (got, want) in back.iter().zip(&originals) {
        let offset = got.position.to_u64().expect("byte offset");
        assert!(offset > previous, "positions are increasing byte offsets");
        previous = offset;
        let mut got = got.clone();
        got.position = want.position.clone();
        assert_eq!(&got, want);
    }
    assert_eq!(previous, std::fs::metadata(&path).expect("stat").len());
}

#[tokio::test]
async fn bad_opencdc_line_is_an_error_naming_file_and_line() {
    let good = sluice_sdk::opencdc::to_json(&Record::new(Position::from_u64(1), "ok"));
    let mut content = Vec::new();
    for _ in 0..2 {
        content.extend_from_slice(&good);
        content.push(b'\n');
    }
    content.extend_from_slice(b"\n   \n"); // blank lines are skipped
    content.extend_from_slice(br#"{"operation":"merge"}"#);
    content.push(b'\n');
    let (_d, path) = temp_file(&content);
    let mut src = open_source(&path, &[("format", "opencdc")], None)
        .await
        .expect("open");
    // The good records before the bad line are delivered first.
    let batch = src.read(100).await.expect("first read");
    assert_eq!(batch.records.len(), 2);
    let err = src.read(100).await.expect_err("bad line");
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("line 5"), "{text}");
    assert!(text.contains("merge"), "{text}");
    // The error is stable, not a one-off.
    let again = src.read(100).await.expect_err("still bad");
    assert_eq!(again.to_string(), text);
}

#[tokio::test]
async fn bad_opencdc_final_line_without_newline_is_reported() {
    let (_d, path) = temp_file(b"not json");
    let mut src = open_source(&path, &[("format", "opencdc")], None)
        .await
        .expect("open");
    let err = src.read(10).await.expect_err("bad line");
    assert!(err.to_string().contains("line 1"), "{err}");
}

/// Reads in follow mode until `want` records arrived (each read returns within a poll interval).
async fn read_following(src: &mut dyn Source, want: usize) -> Vec<Record> {
    let mut out = Vec::new();
    for _ in 0..2000 {
        let batch = src.read(100).await.expect("read");
        assert!(!batch.end_of_stream, "a following source never ends");
        out.extend(batch.records);
        if out.len() >= want {
            return out;
        }
    }
    panic!("only {} of {want} records arrived", out.len());
}

#[tokio::test]
async fn follow_mode_picks_up_appended_lines_and_waits_for_the_newline() {
    let (_d, path) = temp_file(b"one\n");
    let follow = [("follow", "true"), ("poll-interval", "5ms")];
    let mut src = open_source(&path, &follow, None).await.expect("open");
    assert_eq!(
        payloads(&read_following(src.as_mut(), 1).await),
        vec![b"one".to_vec()]
    );

    // At end of file a read returns an empty batch, not end of stream.
    let idle = src.read(10).await.expect("idle read");
    assert!(idle.records.is_empty() && !idle.end_of_stream);

    // A partial line is not emitted...
    append(&path, b"tw");
    for _ in 0..3 {
        let batch = src.read(10).await.expect("read");
        assert!(batch.records.is_empty(), "partial line emitted: {batch:?}");
    }
    // ...until its newline arrives.
    append(&path, b"o\nthree\n");
    let records = read_following(src.as_mut(), 2).await;
    assert_eq!(payloads(&records), vec![b"two".to_vec(), b"three".to_vec()]);
    assert_eq!(offsets(&records), vec![8, 14]);
    assert_eq!(
        src.stop().await.expect("stop"),
        Some(Position::from_u64(14))
    );
}

#[tokio::test]
async fn cancelled_follow_read_returns_promptly_and_loses_nothing() {
    let (_d, path) = temp_file(b"a\n");
    // A poll interval far longer than the test: only cancellation can end the waiting read.
    let follow = [("follow", "true"), ("poll-interval", "1h")];
    let mut src = open_source(&path, &follow, None).await.expect("open");
    assert_eq!(
        payloads(&src.read(10).await.expect("read").records),
        vec![b"a".to_vec()]
    );
    let cancelled = tokio::time::timeout(Duration::from_millis(50), src.read(10)).await;
    assert!(
        cancelled.is_err(),
        "the read should still be waiting: {cancelled:?}"
    );
    // The dropped read left the source usable: the next read looks at the file first.
    append(&path, b"b\n");
    let batch = src.read(10).await.expect("read after cancel");
    assert_eq!(payloads(&batch.records), vec![b"b".to_vec()]);
    assert_eq!(offsets(&batch.records), vec![4]);
}

#[tokio::test]
async fn follow_mode_stops_when_the_file_is_truncated() {
    let (_d, path) = temp_file(b"aaaa\n");
    let follow = [("follow", "true"), ("poll-interval", "5ms")];
    let mut src = open_source(&path, &follow, None).await.expect("open");
    assert_eq!(read_following(src.as_mut(), 1).await.len(), 1);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open")
        .set_len(0)
        .expect("truncate");
    let err = src.read(10).await.expect_err("truncated");
    assert!(err.to_string().contains("truncated"), "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn follow_mode_stops_when_the_file_is_replaced() {
    let (dir, path) = temp_file(b"aaaa\n");
    let follow = [("follow", "true"), ("poll-interval", "5ms")];
    let mut src = open_source(&path, &follow, None).await.expect("open");
    assert_eq!(read_following(src.as_mut(), 1).await.len(), 1);
    let other = dir.path().join("new.txt");
    std::fs::write(&other, b"aaaa\nbbbb\n").expect("write replacement");
    std::fs::rename(&other, &path).expect("replace");
    let err = src.read(10).await.expect_err("replaced");
    assert!(err.to_string().contains("no longer names"), "{err}");
}

#[tokio::test]
async fn missing_file_error_names_the_path() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("does-not-exist.txt");
    let err = match open_source(&path, &[], None).await {
        Err(e) => e,
        Ok(_) => panic!("opened a missing file"),
    };
    assert!(matches!(err, ConnectorError::Io { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("No such file"), "{text}");
}

#[tokio::test]
async fn position_past_end_of_file_is_invalid() {
    let (_d, path) = temp_file(b"abc\n");
    let err = match open_source(&path, &[], Some(&Position::from_u64(5))).await {
        Err(e) => e,
        Ok(_) => panic!("opened past the end"),
    };
    match err {
        ConnectorError::InvalidPosition { position, reason } => {
            assert_eq!(position.to_u64(), Some(5));
            assert!(reason.contains(&path.display().to_string()), "{reason}");
            assert!(reason.contains("past the end"), "{reason}");
        }
        other => panic!("expected InvalidPosition, got {other:?}"),
    }
}

#[tokio::test]
async fn position_inside_a_line_or_not_an_offset_is_invalid() {
    let (_d, path) = temp_file(b"abc\ndef\n");
    for bad in [Position::from_u64(2), Position::new(b"not-a-number")] {
        match open_source(&path, &[], Some(&bad)).await {
            Err(ConnectorError::InvalidPosition { reason, .. }) => {
                assert!(reason.contains(&path.display().to_string()), "{reason}")
            }
            Err(other) => panic!("expected InvalidPosition for {bad}, got {other:?}"),
            Ok(_) => panic!("opened at {bad}"),
        }
    }
}

#[tokio::test]
async fn lines_longer_than_the_read_buffer_cross_chunk_boundaries() {
    // Lines from empty to 40x the read size, so lines span many reads and reads end mid-line.
    let read_size = 64;
    let mut content = Vec::new();
    let mut expected = Vec::new();
    let mut ends = Vec::new();
    for i in 0..300usize {
        let len = (i * 37) % 200 + if i % 50 == 7 { 2500 } else { 0 };
        let line: Vec<u8> = (0..len).map(|j| b'a' + ((i + j) % 26) as u8).collect();
        content.extend_from_slice(&line);
        content.push(b'\n');
        expected.push(line);
        ends.push(content.len() as u64);
    }
    let (_d, path) = temp_file(&content);
    let size = read_size.to_string();
    for max in [1, 7, 1000] {
        let mut src = open_source(&path, &[("read-buffer-size", &size)], None)
            .await
            .expect("open");
        let records = read_all(src.as_mut(), max).await;
        assert_eq!(payloads(&records), expected, "max {max}");
        assert_eq!(offsets(&records), ends, "max {max}");
    }
}

#[tokio::test]
async fn a_line_over_max_line_size_is_an_error() {
    let mut content = b"short\n".to_vec();
    content.extend(std::iter::repeat_n(b'x', 5000));
    content.push(b'\n');
    let (_d, path) = temp_file(&content);
    let mut src = open_source(
        &path,
        &[("read-buffer-size", "100"), ("max-line-size", "1000")],
        None,
    )
    .await
    .expect("open");
    let first = src.read(10).await.expect("first line");
    assert_eq!(payloads(&first.records), vec![b"short".to_vec()]);
    let err = src.read(10).await.expect_err("too long");
    assert!(err.to_string().contains("max-line-size"), "{err}");
    assert!(err.to_string().contains("byte offset 6"), "{err}");
}

#[tokio::test]
async fn source_lifecycle_errors_and_stop() {
    let (_d, path) = temp_file(b"a\nb\n");
    let mut src = FilePlugin.new_source().expect("source");
    src.teardown().await.expect("teardown without open");
    assert!(matches!(
        src.read(1).await,
        Err(ConnectorError::StreamNotOpen)
    ));
    src.configure(&settings(&path, &[]))
        .await
        .expect("configure");
    src.open(None).await.expect("open");
    let batch = src.read(1).await.expect("read");
    assert_eq!(offsets(&batch.records), vec![2]);
    src.ack(&[Position::from_u64(2)]).await.expect("ack");
    assert_eq!(src.stop().await.expect("stop"), Some(Position::from_u64(2)));
    assert!(matches!(
        src.read(1).await,
        Err(ConnectorError::StreamNotOpen)
    ));
    src.ack(&[Position::from_u64(2)])
        .await
        .expect("ack after stop");
    src.teardown().await.expect("teardown");
    src.teardown().await.expect("teardown twice");
}

#[tokio::test]
async fn conduit_settings_configure_unchanged() {
    let (_d, path) = temp_file(b"x\n");
    let mut conduit = settings(&path, &[]);
    conduit.insert("sdk.batch.size".into(), "100".into());
    let mut src = FilePlugin.new_source().expect("source");
    src.configure(&conduit)
        .await
        .expect("source accepts Conduit settings");
    let mut dst = FilePlugin.new_destination().expect("destination");
    dst.configure(&conduit)
        .await
        .expect("destination accepts Conduit settings");
    let mut unknown = settings(&path, &[("colour", "red")]);
    unknown.remove("path");
    let err = src.configure(&unknown).await.expect_err("invalid");
    let text = err.to_string();
    assert!(
        text.contains("\"path\"") && text.contains("\"colour\""),
        "{text}"
    );
}

#[tokio::test]
async fn destination_appends_and_acks_what_was_written_since_the_last_ack() {
    let (dir, _) = temp_file(b"");
    let path = dir.path().join("out.txt");
    std::fs::write(&path, b"old\n").expect("seed");
    let mut dst = open_destination(&path, &[("buffer-size", "8")]).await;
    let records: Vec<Record> = ["a", "bb", "ccc"]
        .iter()
        .enumerate()
        .map(|(i, s)| Record::new(Position::from_u64(i as u64), Data::Raw(Bytes::from(*s))))
        .collect();
    dst.write(&records[..2]).await.expect("write");
    dst.write(&records[2..]).await.expect("write");
    let acks = dst.ack().await.expect("ack");
    assert_eq!((acks.count, acks.nacks), (3, vec![]));
    assert_eq!(std::fs::read(&path).expect("read"), b"old\na\nbb\nccc\n");
    assert_eq!(dst.ack().await.expect("empty ack").count, 0);

    let mut structured_record = Record::new(Position::from_u64(9), structured(r#"{"k":"v\nw"}"#));
    structured_record.key = Some(Data::from("ignored"));
    dst.write(&[structured_record])
        .await
        .expect("write structured");
    dst.stop(Some(&Position::from_u64(9))).await.expect("stop");
    assert!(matches!(
        dst.write(&records).await,
        Err(ConnectorError::StreamNotOpen)
    ));
    assert_eq!(dst.ack().await.expect("ack after stop").count, 1);
    dst.teardown().await.expect("teardown");
    dst.teardown().await.expect("teardown twice");
    assert_eq!(
        std::fs::read(&path).expect("read"),
        b"old\na\nbb\nccc\n{\"k\":\"v\\nw\"}\n"
    );
}

#[tokio::test]
async fn fsync_policy_parses() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("out.txt");
    for policy in ["always", "never"] {
        let mut dst = open_destination(&path, &[("fsync", policy)]).await;
        dst.write(&[Record::new(
            Position::from_u64(1),
            policy.as_bytes().to_vec(),
        )])
        .await
        .expect("write");
        assert_eq!(dst.ack().await.expect("ack").count, 1);
        dst.teardown().await.expect("teardown");
    }
    assert_eq!(std::fs::read(&path).expect("read"), b"always\nnever\n");
    let mut dst = FilePlugin.new_destination().expect("destination");
    let err = dst
        .configure(&settings(&path, &[("fsync", "sometimes")]))
        .await
        .expect_err("bad policy");
    assert!(err.to_string().contains("\"fsync\""), "{err}");
}

#[tokio::test]
async fn torn_last_line_is_truncated_on_open() {
    let (dir, _) = temp_file(b"");
    let path = dir.path().join("out.txt");
    std::fs::write(&path, b"a\nb\npartial-record-cut-by-a-cra").expect("seed");
    let mut dst = open_destination(&path, &[]).await;
    assert_eq!(std::fs::read(&path).expect("read"), b"a\nb\n");
    dst.write(&[Record::new(Position::from_u64(1), "c")])
        .await
        .expect("write");
    dst.ack().await.expect("ack");
    assert_eq!(std::fs::read(&path).expect("read"), b"a\nb\nc\n");

    // A file with no complete line at all is emptied.
    std::fs::write(&path, b"only-a-torn-line").expect("seed");
    let _dst = open_destination(&path, &[]).await;
    assert_eq!(std::fs::read(&path).expect("read"), b"");
}

#[tokio::test]
async fn records_the_lines_format_cannot_represent_are_nacked() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("out.txt");
    let mut dst = open_destination(&path, &[]).await;
    let mut no_payload = Record::new(Position::from_u64(2), "x");
    no_payload.payload.after = None;
    let first = vec![
        Record::new(Position::from_u64(1), "ok1"),
        no_payload,
        Record::new(Position::from_u64(3), "ok2"),
    ];
    let second = vec![
        Record::new(Position::from_u64(4), "two\nlines"),
        Record::new(Position::from_u64(5), "ok3"),
    ];
    dst.write(&first).await.expect("write");
    dst.write(&second).await.expect("write");
    let acks = dst.ack().await.expect("ack");
    assert_eq!(acks.count, 5);
    let indexes: Vec<usize> = acks.nacks.iter().map(|n| n.index).collect();
    assert_eq!(indexes, vec![1, 3]);
    assert!(
        acks.nacks[0].reason.contains("payload.after"),
        "{:?}",
        acks.nacks
    );
    assert!(acks.nacks[1].reason.contains("newline"), "{:?}", acks.nacks);
    assert_eq!(std::fs::read(&path).expect("read"), b"ok1\nok2\nok3\n");
    // Indexes restart with each ack.
    dst.write(&second).await.expect("write");
    let acks = dst.ack().await.expect("ack");
    assert_eq!(acks.count, 2);
    assert_eq!(
        acks.nacks.iter().map(|n| n.index).collect::<Vec<_>>(),
        vec![0]
    );
}

#[tokio::test]
async fn destination_refuses_a_missing_directory_naming_the_path() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("no-such-dir").join("out.txt");
    let mut dst = FilePlugin.new_destination().expect("destination");
    dst.configure(&settings(&path, &[]))
        .await
        .expect("configure");
    let err = dst.open().await.expect_err("missing directory");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert!(matches!(
        dst.write(&[]).await,
        Err(ConnectorError::StreamNotOpen)
    ));
}

#[tokio::test]
async fn large_file_round_trips_through_small_buffers() {
    let dir = tempfile::tempdir().expect("dir");
    let input = dir.path().join("in.txt");
    let output = dir.path().join("out.txt");
    let mut content = Vec::new();
    for i in 0..20_000u32 {
        content.extend_from_slice(
            format!(
                "{{\"n\":{i},\"pad\":\"{}\"}}\n",
                "p".repeat((i % 97) as usize)
            )
            .as_bytes(),
        );
    }
    std::fs::write(&input, &content).expect("write input");
    let mut src = open_source(&input, &[("read-buffer-size", "4096")], None)
        .await
        .expect("open");
    let mut dst = open_destination(&output, &[("buffer-size", "10000"), ("fsync", "never")]).await;
    let mut total = 0;
    loop {
        let batch = src.read(333).await.expect("read");
        dst.write(&batch.records).await.expect("write");
        total += dst.ack().await.expect("ack").count;
        if batch.end_of_stream {
            break;
        }
    }
    assert_eq!(total, 20_000);
    dst.teardown().await.expect("teardown");
    assert!(
        std::fs::read(&output).expect("read") == content,
        "copy differs"
    );
}

mod acceptance {
    //! The shared acceptance kit, run against the file source (plain, following, OpenCDC) and
    //! destination (lines, OpenCDC).

    use std::path::PathBuf;
    use std::sync::Arc;

    use async_trait::async_trait;
    use bytes::Bytes;
    use sluice_connectors::file::FilePlugin;
    use sluice_sdk::acceptance::{
        destination_acceptance, source_acceptance, DestinationFixture, Expected,
        SourceCapabilities, SourceFixture, Written,
    };
    use sluice_sdk::{Data, Plugin, Position, Record, Settings};

    use super::append;

    fn with_path(path: &std::path::Path, extra: &[(&str, &str)]) -> Settings {
        super::settings(path, extra)
    }

    /// Invalid settings shared by both sides, with the parameter each must name.
    fn invalid(
        path: &std::path::Path,
        extra: &[(&'static str, &'static str)],
    ) -> Vec<(Settings, &'static str)> {
        let mut out = vec![(with_path(path, &[("format", "xml")]), "format")];
        for &(name, value) in extra {
            out.push((with_path(path, &[(name, value)]), name));
        }
        out
    }

    struct SourceFx {
        dir: tempfile::TempDir,
        path: PathBuf,
        files: usize,
        produced: usize,
        follow: bool,
        opencdc: bool,
    }

    impl SourceFx {
        fn new(follow: bool, opencdc: bool) -> Self {
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("unused");
            SourceFx {
                dir,
                path,
                files: 0,
                produced: 0,
                follow,
                opencdc,
            }
        }
    }

    #[async_trait]
    impl SourceFixture for SourceFx {
        fn plugin(&self) -> Arc<dyn Plugin> {
            Arc::new(FilePlugin)
        }

        async fn settings(&mut self) -> Settings {
            self.files += 1;
            self.path = self.dir.path().join(format!("source-{}.txt", self.files));
            std::fs::write(&self.path, b"").expect("create source file");
            let mut extra = vec![];
            if self.follow {
                extra.extend([("follow", "true"), ("poll-interval", "10ms")]);
            }
            if self.opencdc {
                extra.push(("format", "opencdc"));
            }
            with_path(&self.path, &extra)
        }

        async fn produce(&mut self, n: usize) -> Vec<Expected> {
            let mut bytes = Vec::new();
            let mut expected = Vec::new();
            for _ in 0..n {
                self.produced += 1;
                let payload = format!("record {} with a tab\tand a \r", self.produced);
                if self.opencdc {
                    let record = Record::new(Position::from_u64(0), payload.clone().into_bytes());
                    bytes.extend(sluice_sdk::opencdc::to_json(&record));
                } else {
                    bytes.extend_from_slice(payload.as_bytes());
                }
                bytes.push(b'\n');
                expected.push(Expected::Payload(Bytes::from(payload)));
            }
            append(&self.path, &bytes);
            expected
        }

        fn invalid_settings(&self) -> Vec<(Settings, &'static str)> {
            invalid(
                &self.path,
                &[
                    ("follow", "sometimes"),
                    ("poll-interval", "0s"),
                    ("read-buffer-size", "0"),
                    ("max-line-size", "-1"),
                ],
            )
        }

        fn capabilities(&self) -> SourceCapabilities {
            SourceCapabilities {
                live: self.follow,
                snapshot: false,
                end_of_stream: !self.follow,
                resume: true,
                self_producing: false,
            }
        }
    }

    #[tokio::test]
    async fn source_passes_the_acceptance_kit() {
        for (follow, opencdc) in [(false, false), (true, false), (false, true)] {
            let report = source_acceptance(SourceFx::new(follow, opencdc)).await;
            assert!(report.passed.contains(&"resume"), "{report:?}");
            assert!(report.passed.contains(&"cancel"), "{report:?}");
            assert_eq!(
                report.passed.contains(&"snapshot-then-live"),
                follow,
                "{report:?}"
            );
        }
    }

    struct DestinationFx {
        dir: tempfile::TempDir,
        path: PathBuf,
        files: usize,
        opencdc: bool,
    }

    impl DestinationFx {
        fn new(opencdc: bool) -> Self {
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("unused");
            DestinationFx {
                dir,
                path,
                files: 0,
                opencdc,
            }
        }
    }

    #[async_trait]
    impl DestinationFixture for DestinationFx {
        fn plugin(&self) -> Arc<dyn Plugin> {
            Arc::new(FilePlugin)
        }

        async fn settings(&mut self) -> Settings {
            self.files += 1;
            self.path = self
                .dir
                .path()
                .join(format!("destination-{}.txt", self.files));
            let format = if self.opencdc { "opencdc" } else { "lines" };
            with_path(&self.path, &[("format", format)])
        }

        fn invalid_settings(&self) -> Vec<(Settings, &'static str)> {
            invalid(&self.path, &[("fsync", "sometimes"), ("buffer-size", "0")])
        }

        async fn written(&mut self) -> Written {
            let content = std::fs::read(&self.path).unwrap_or_default();
            let records = content
                .split(|&b| b == b'\n')
                .filter(|line| !line.is_empty())
                .enumerate()
                .map(|(i, line)| {
                    if self.opencdc {
                        sluice_sdk::opencdc::from_json(line).expect("an OpenCDC line")
                    } else {
                        Record::new(
                            Position::from_u64(i as u64),
                            Data::Raw(Bytes::copy_from_slice(line)),
                        )
                    }
                })
                .collect();
            Written::Records(records)
        }
    }

    #[tokio::test]
    async fn destination_passes_the_acceptance_kit() {
        for opencdc in [false, true] {
            let report = destination_acceptance(DestinationFx::new(opencdc)).await;
            assert!(!report.passed.is_empty(), "{report:?}");
            assert!(report.skipped.is_empty(), "{report:?}");
        }
    }
}
