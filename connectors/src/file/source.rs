//! The file source: JSON-lines or CSV files, one partition per file.
//!
//! Files are read in large chunks and split on `\n` without copying lines; `\r\n` endings,
//! empty lines and a leading UTF-8 byte-order mark are handled. Each line is decoded with the
//! engine's [`JsonDecoder`] or [`CsvDecoder`]; a line that does not decode becomes a
//! [`DeadLetter`] carrying its byte offset and original bytes, and reading continues.
//!
//! Position encoding: 8 bytes, big-endian `u64`, the byte offset just past the last line
//! returned (for CSV never before the end of the header row).

use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::path::Path;

use compact_str::CompactString;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use weir_engine::event::decode::{CsvDecoder, DecodeError, JsonDecoder};
use weir_engine::event::{DeadLetter, Record};
use weir_engine::runtime::{DecodeContext, PollStatus, SourceBatch, SourceError, SourcePartition};
use weir_engine::topology::ConfigIssue;

/// Bytes requested from the file per read.
const READ_SIZE: usize = 1 << 20;
/// Lines longer than this become dead letters without being buffered whole.
pub const MAX_LINE: usize = 16 << 20;
/// How much of an over-long line a dead letter keeps.
const LONG_LINE_PREFIX: usize = 4096;

/// How the lines of a file are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// One JSON object per line (`json` is accepted as an alias).
    #[serde(alias = "json")]
    Jsonl,
    /// Comma-separated values; the first line is the header naming the columns.
    Csv,
}

/// Options of a `type: file` source. The common keys `type`, `event_time`, `watermark` and
/// `dead_letter` are handled by the engine and not part of this struct.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// One input file (shorthand for a one-element `paths`).
    #[serde(default)]
    pub path: Option<String>,
    /// Input files; each file is one partition, read in order by its own task.
    #[serde(default)]
    pub paths: Vec<String>,
    /// `jsonl` or `csv`. Default: `csv` for files ending in `.csv`, `jsonl` otherwise.
    #[serde(default)]
    pub format: Option<FileFormat>,
    /// `false` (default): the end of a file ends its partition. `true`: keep polling each
    /// file for appended lines (like `tail -f`); a line counts once its newline is written.
    #[serde(default)]
    pub follow: bool,
}

impl FileSourceConfig {
    /// Parses the connector options of a source, reporting every problem with its path under
    /// `prefix` (e.g. `sources.events`).
    pub fn from_options(
        prefix: &str,
        options: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, Vec<ConfigIssue>> {
        let config: FileSourceConfig = parse_options(prefix, options)?;
        let mut issues = Vec::new();
        if config.path.is_none() && config.paths.is_empty() {
            issues.push(ConfigIssue {
                path: prefix.to_owned(),
                message: "a file source needs `path` or `paths`".into(),
            });
        }
        if config.path.as_deref() == Some("") {
            issues.push(ConfigIssue {
                path: join_path(prefix, "path"),
                message: "the path is empty".into(),
            });
        }
        for (i, p) in config.paths.iter().enumerate() {
            if p.is_empty() {
                issues.push(ConfigIssue {
                    path: format!("{}[{i}]", join_path(prefix, "paths")),
                    message: "the path is empty".into(),
                });
            }
        }
        if issues.is_empty() {
            Ok(config)
        } else {
            Err(issues)
        }
    }

    /// Every input file: `path` first, then `paths`.
    pub fn files(&self) -> Vec<&str> {
        self.path
            .iter()
            .chain(self.paths.iter())
            .map(String::as_str)
            .collect()
    }

    /// The format of `path`: the configured one, else inferred from the file extension.
    pub fn format_of(&self, path: &str) -> FileFormat {
        match self.format {
            Some(f) => f,
            None => {
                let is_csv = Path::new(path)
                    .extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
                if is_csv {
                    FileFormat::Csv
                } else {
                    FileFormat::Jsonl
                }
            }
        }
    }
}

fn join_path(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Deserializes `options` into `T`, checking each key on its own first so that every bad key
/// is reported (not only the first). `T` must have a default for every field.
fn parse_options<T: serde::de::DeserializeOwned>(
    prefix: &str,
    options: &serde_json::Map<String, serde_json::Value>,
) -> Result<T, Vec<ConfigIssue>> {
    let mut issues = Vec::new();
    for (key, value) in options {
        let mut single = serde_json::Map::new();
        single.insert(key.clone(), value.clone());
        if let Err(e) = serde_json::from_value::<T>(serde_json::Value::Object(single)) {
            issues.push(ConfigIssue {
                path: join_path(prefix, key),
                message: e.to_string(),
            });
        }
    }
    if !issues.is_empty() {
        return Err(issues);
    }
    serde_json::from_value(serde_json::Value::Object(options.clone())).map_err(|e| {
        vec![ConfigIssue {
            path: prefix.to_owned(),
            message: e.to_string(),
        }]
    })
}

/// Opens one partition per configured file, with id `file:<path>`.
///
/// Missing or unreadable files and a CSV header without the event-time column are fatal.
pub fn open_file_source(
    source_name: &str,
    config: &FileSourceConfig,
    ctx: &DecodeContext,
) -> Result<Vec<Box<dyn SourcePartition>>, SourceError> {
    let mut partitions: Vec<Box<dyn SourcePartition>> = Vec::new();
    for path in config.files() {
        let partition = FilePartition::open(
            source_name,
            path,
            config.format_of(path),
            config.follow,
            ctx,
        )?;
        partitions.push(Box::new(partition));
    }
    Ok(partitions)
}

/// How a partition decodes its lines.
enum LineDecoder {
    Json(JsonDecoder),
    /// `None` until the header row has been read (an empty followed file has none yet).
    Csv(Option<CsvDecoder>),
}

impl LineDecoder {
    fn decode(&mut self, line: &[u8]) -> Result<Record, DecodeError> {
        match self {
            LineDecoder::Json(d) => d.decode(line),
            LineDecoder::Csv(Some(d)) => d.decode(line),
            LineDecoder::Csv(None) => Err(DecodeError("CSV header not read".into())),
        }
    }
}

/// An over-long line being discarded up to its newline.
struct LongLine {
    offset: u64,
    prefix: Vec<u8>,
    len: u64,
}

/// One file being read.
pub struct FilePartition {
    id: String,
    source: CompactString,
    partition: CompactString,
    path: String,
    file: File,
    follow: bool,
    ctx: DecodeContext,
    decoder: LineDecoder,
    /// Read buffer; `buf[start..end]` is read but not yet consumed.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// File offset of `buf[0]`.
    buf_offset: u64,
    /// Where records begin: after a byte-order mark (JSON) or the header row (CSV).
    data_start: u64,
    /// Just past the last line returned.
    position: u64,
    long_line: Option<LongLine>,
    /// The final unterminated line was consumed (only when not following).
    finished: bool,
}

fn io_error(path: &str, what: &str, e: std::io::Error) -> SourceError {
    match e.kind() {
        ErrorKind::Interrupted | ErrorKind::WouldBlock | ErrorKind::TimedOut => {
            SourceError::Retryable(format!("{what} {path}: {e}"))
        }
        _ => SourceError::Fatal(format!("{what} {path}: {e}")),
    }
}

/// The index of the first `\n` in `hay`, eight bytes at a time.
fn find_newline(hay: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    const NL: u64 = 0x0a0a_0a0a_0a0a_0a0a;
    let mut chunks = hay.chunks_exact(8);
    let mut base = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word) ^ NL;
        let found = x.wrapping_sub(ONES) & !x & HIGHS;
        if found != 0 {
            // The lowest flagged byte is always a true match.
            return Some(base + (found.trailing_zeros() / 8) as usize);
        }
        base += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == b'\n')
        .map(|i| base + i)
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r'))
}

impl FilePartition {
    /// Opens `path`, reading the CSV header (when present yet) so configuration errors show
    /// before any record is read.
    pub fn open(
        source_name: &str,
        path: &str,
        format: FileFormat,
        follow: bool,
        ctx: &DecodeContext,
    ) -> Result<Self, SourceError> {
        let file = File::open(path).map_err(|e| io_error(path, "cannot open", e))?;
        let id = format!("file:{path}");
        let decoder = match format {
            FileFormat::Jsonl => LineDecoder::Json(JsonDecoder::new(ctx)),
            FileFormat::Csv => LineDecoder::Csv(None),
        };
        let mut partition = FilePartition {
            partition: id.as_str().into(),
            id,
            source: source_name.into(),
            path: path.to_owned(),
            file,
            follow,
            ctx: ctx.clone(),
            decoder,
            buf: Vec::new(),
            start: 0,
            end: 0,
            buf_offset: 0,
            data_start: 0,
            position: 0,
            long_line: None,
            finished: false,
        };
        match format {
            FileFormat::Jsonl => {
                let mut bom = [0u8; 3];
                let n = partition.read_at(0, &mut bom)?;
                if n == 3 && bom == *b"\xEF\xBB\xBF" {
                    partition.data_start = 3;
                }
            }
            FileFormat::Csv => {
                partition.read_header()?;
            }
        }
        partition.reset_to(partition.data_start)?;
        Ok(partition)
    }

    /// Reads into `out` from `offset`, returning how many bytes were read (less at EOF).
    fn read_at(&mut self, offset: u64, out: &mut [u8]) -> Result<usize, SourceError> {
        self.file
            .seek(SeekFrom::Start(offset))
            .map_err(|e| io_error(&self.path, "cannot seek in", e))?;
        let mut filled = 0;
        while filled < out.len() {
            let slot = out.get_mut(filled..).unwrap_or_default();
            match self.file.read(slot) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error(&self.path, "cannot read", e)),
            }
        }
        Ok(filled)
    }

    /// Reads the CSV header row if the file has one yet; returns whether the decoder is ready.
    fn read_header(&mut self) -> Result<bool, SourceError> {
        if !matches!(self.decoder, LineDecoder::Csv(None)) {
            return Ok(true);
        }
        let mut header = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut offset = 0u64;
        let header_end = loop {
            let n = self.read_at(offset, &mut chunk)?;
            let got = chunk.get(..n).unwrap_or_default();
            if let Some(i) = find_newline(got) {
                header.extend_from_slice(got.get(..i).unwrap_or_default());
                break offset + i as u64 + 1;
            }
            header.extend_from_slice(got);
            offset += n as u64;
            if header.len() > MAX_LINE {
                return Err(SourceError::Fatal(format!(
                    "{}: the CSV header row is longer than {MAX_LINE} bytes",
                    self.path
                )));
            }
            if n == 0 {
                // No newline yet: a followed file may still be mid-write; otherwise the whole
                // file is the header.
                if self.follow || header.is_empty() {
                    return Ok(false);
                }
                break offset;
            }
        };
        let decoder = CsvDecoder::new(&self.ctx, &header)
            .map_err(|e| SourceError::Fatal(format!("{}: {}", self.path, e.0)))?;
        self.decoder = LineDecoder::Csv(Some(decoder));
        self.data_start = header_end;
        Ok(true)
    }

    /// Positions reading at `offset` (clamped to where records begin), dropping buffered data.
    fn reset_to(&mut self, offset: u64) -> Result<(), SourceError> {
        let offset = offset.max(self.data_start);
        self.file
            .seek(SeekFrom::Start(offset))
            .map_err(|e| io_error(&self.path, "cannot seek in", e))?;
        self.buf_offset = offset;
        self.start = 0;
        self.end = 0;
        self.position = offset;
        self.long_line = None;
        self.finished = false;
        Ok(())
    }

    /// Reads more bytes after `buf[..end]`, first moving unconsumed bytes to the front and
    /// growing the buffer when a line does not fit. Returns the number of bytes read.
    fn fill(&mut self) -> Result<usize, SourceError> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.buf_offset += self.start as u64;
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < self.end + READ_SIZE {
            self.buf.resize(self.end + READ_SIZE, 0);
        }
        loop {
            let slot = self.buf.get_mut(self.end..).unwrap_or_default();
            match self.file.read(slot) {
                Ok(n) => {
                    self.end += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error(&self.path, "cannot read", e)),
            }
        }
    }

    /// Decodes one line (newline removed) starting at file offset `offset` into `out`;
    /// returns whether it produced a record or dead letter (blank lines produce nothing).
    fn emit(&mut self, line_start: usize, line_end: usize, out: &mut SourceBatch) -> bool {
        let offset = self.buf_offset + line_start as u64;
        let line = self.buf.get(line_start..line_end).unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() || (line.first().is_some_and(u8::is_ascii_whitespace) && is_blank(line))
        {
            return false;
        }
        match self.decoder.decode(line) {
            Ok(record) => out.records.push(record),
            Err(e) => out.dead_letters.push(DeadLetter {
                source: self.source.clone(),
                partition: self.partition.clone(),
                offset: offset.to_string().into(),
                raw: line.to_vec(),
                error: e.0,
            }),
        }
        true
    }

    fn long_line_dead_letter(&self, long: LongLine, out: &mut SourceBatch) {
        out.dead_letters.push(DeadLetter {
            source: self.source.clone(),
            partition: self.partition.clone(),
            offset: long.offset.to_string().into(),
            raw: long.prefix,
            error: format!(
                "line of {} bytes exceeds the {} MiB limit (first {} bytes kept)",
                long.len,
                MAX_LINE >> 20,
                LONG_LINE_PREFIX
            ),
        });
    }
}

impl SourcePartition for FilePartition {
    fn id(&self) -> &str {
        &self.id
    }

    fn seek(&mut self, position: &[u8]) -> Result<(), SourceError> {
        let bytes: [u8; 8] = position.try_into().map_err(|_| {
            SourceError::Fatal(format!(
                "{}: invalid stored position ({} bytes, expected 8)",
                self.id,
                position.len()
            ))
        })?;
        let offset = u64::from_be_bytes(bytes);
        let len = self
            .file
            .metadata()
            .map_err(|e| io_error(&self.path, "cannot stat", e))?
            .len();
        if offset > len {
            return Err(SourceError::Fatal(format!(
                "{}: stored position {offset} is beyond the end of the file ({len} bytes); \
                 was it truncated or replaced?",
                self.id
            )));
        }
        self.reset_to(offset)
    }

    fn poll(
        &mut self,
        out: &mut SourceBatch,
        max_records: usize,
    ) -> Result<PollStatus, SourceError> {
        if self.finished {
            return Ok(PollStatus::End);
        }
        if !self.read_header()? {
            return Ok(if self.follow {
                PollStatus::Idle
            } else {
                PollStatus::End
            });
        }
        if self.position < self.data_start {
            // The header arrived after the partition was opened on an empty file.
            self.reset_to(self.data_start)?;
        }
        let mut produced = 0;
        while produced < max_records {
            let pending = self.buf.get(self.start..self.end).unwrap_or_default();
            let newline = find_newline(pending);
            if let Some(mut long) = self.long_line.take() {
                match newline {
                    Some(i) => {
                        long.len += i as u64;
                        self.start += i + 1;
                        self.position = self.buf_offset + self.start as u64;
                        self.long_line_dead_letter(long, out);
                        produced += 1;
                        continue;
                    }
                    None => {
                        long.len += pending.len() as u64;
                        self.start = self.end;
                        self.long_line = Some(long);
                    }
                }
            } else if let Some(i) = newline {
                let line_start = self.start;
                self.start += i + 1;
                if i > MAX_LINE {
                    let keep = pending.get(..LONG_LINE_PREFIX).unwrap_or(pending);
                    let long = LongLine {
                        offset: self.buf_offset + line_start as u64,
                        prefix: keep.to_vec(),
                        len: i as u64,
                    };
                    self.long_line_dead_letter(long, out);
                    produced += 1;
                } else if self.emit(line_start, line_start + i, out) {
                    produced += 1;
                }
                self.position = self.buf_offset + self.start as u64;
                continue;
            } else if pending.len() > MAX_LINE {
                let keep = pending.get(..LONG_LINE_PREFIX).unwrap_or(pending);
                self.long_line = Some(LongLine {
                    offset: self.buf_offset + self.start as u64,
                    prefix: keep.to_vec(),
                    len: pending.len() as u64,
                });
                self.start = self.end;
            }
            // No complete line buffered: read more.
            if self.fill()? == 0 {
                if self.follow {
                    break;
                }
                // End of file: a final line without newline is still a record.
                if let Some(long) = self.long_line.take() {
                    self.long_line_dead_letter(long, out);
                    produced += 1;
                } else if self.start < self.end {
                    let (line_start, line_end) = (self.start, self.end);
                    if self.emit(line_start, line_end, out) {
                        produced += 1;
                    }
                }
                self.start = self.end;
                self.position = self.buf_offset + self.end as u64;
                self.finished = true;
                break;
            }
        }
        if produced > 0 {
            Ok(PollStatus::Data)
        } else if self.finished {
            Ok(PollStatus::End)
        } else if self.follow {
            Ok(PollStatus::Idle)
        } else {
            Ok(PollStatus::Data)
        }
    }

    fn position(&self) -> Vec<u8> {
        self.position.to_be_bytes().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;

    use weir_engine::event::{FieldSlots, Value};
    use weir_engine::topology::{EventTimeSpec, TimeFormat};

    use super::*;

    fn ctx(time_field: &str) -> DecodeContext {
        let mut slots = FieldSlots::default();
        slots.slot("key");
        slots.slot("value");
        DecodeContext {
            source_name: "events".into(),
            slots: Arc::new(slots),
            event_time: EventTimeSpec {
                field: time_field.into(),
                format: TimeFormat::Auto,
                processing_time: false,
                source_timestamp: false,
            },
        }
    }

    fn write_file(dir: &tempfile::TempDir, name: &str, content: &[u8]) -> String {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path.to_str().unwrap().to_owned()
    }

    fn open(path: &str, format: FileFormat, follow: bool) -> FilePartition {
        FilePartition::open("events", path, format, follow, &ctx("ts")).unwrap()
    }

    /// Polls to the end, returning (records, dead letters).
    fn drain(p: &mut FilePartition, max: usize) -> (Vec<Record>, Vec<DeadLetter>) {
        let mut all = SourceBatch::default();
        loop {
            let mut batch = SourceBatch::default();
            match p.poll(&mut batch, max).unwrap() {
                PollStatus::End => break,
                PollStatus::Idle => panic!("idle on a bounded file"),
                PollStatus::Data => {}
            }
            assert!(batch.records.len() + batch.dead_letters.len() <= max);
            all.records.extend(batch.records);
            all.dead_letters.extend(batch.dead_letters);
        }
        (all.records, all.dead_letters)
    }

    fn pos(p: &FilePartition) -> u64 {
        u64::from_be_bytes(p.position().try_into().unwrap())
    }

    const JSONL: &str = "{\"ts\":1700000000001,\"key\":\"a\",\"value\":1}\n\
        \n\
        {\"ts\":1700000000002,\"key\":\"b\",\"value\":2}\r\n\
        not json\n\
        \r\n\
        {\"ts\":1700000000003,\"key\":\"c\",\"value\":3}";

    #[test]
    fn reads_jsonl_with_dead_letters_and_final_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(&dir, "a.jsonl", JSONL.as_bytes());
        let mut p = open(&path, FileFormat::Jsonl, false);
        assert_eq!(p.id(), format!("file:{path}"));
        assert_eq!(pos(&p), 0);
        let (records, dead) = drain(&mut p, 100);
        let times: Vec<_> = records.iter().map(|r| r.time).collect();
        assert_eq!(
            times,
            [1_700_000_000_001, 1_700_000_000_002, 1_700_000_000_003]
        );
        assert_eq!(records[1].fields[0], Value::Str("b".into()));
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].raw, b"not json");
        assert_eq!(dead[0].source, "events");
        assert_eq!(dead[0].partition, format!("file:{path}"));
        let offset = JSONL.find("not json").unwrap();
        assert_eq!(dead[0].offset, offset.to_string());
        assert!(
            dead[0].error.contains("invalid JSON at byte 0"),
            "{}",
            dead[0].error
        );
        assert_eq!(pos(&p), JSONL.len() as u64);
        assert_eq!(
            p.poll(&mut SourceBatch::default(), 10).unwrap(),
            PollStatus::End
        );
    }

    #[test]
    fn restart_from_every_position_neither_skips_nor_repeats() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(&dir, "a.jsonl", JSONL.as_bytes());
        let (want, want_dead) = drain(&mut open(&path, FileFormat::Jsonl, false), 100);
        // Read one record at a time, "crashing" after each poll and resuming from the position.
        let mut got = Vec::new();
        let mut got_dead = Vec::new();
        let mut position = open(&path, FileFormat::Jsonl, false).position();
        loop {
            let mut p = open(&path, FileFormat::Jsonl, false);
            p.seek(&position).unwrap();
            let mut batch = SourceBatch::default();
            if p.poll(&mut batch, 1).unwrap() == PollStatus::End {
                break;
            }
            got.extend(batch.records);
            got_dead.extend(batch.dead_letters);
            position = p.position();
        }
        assert_eq!(got, want);
        assert_eq!(got_dead, want_dead);
    }

    #[test]
    fn many_lines_across_buffer_refills() {
        let dir = tempfile::tempdir().unwrap();
        let mut content = String::new();
        for i in 0..60_000u64 {
            content.push_str(&format!(
                "{{\"ts\":{},\"key\":\"key_{}\",\"value\":{}}}\n",
                1_700_000_000_000 + i,
                i % 97,
                i
            ));
        }
        let path = write_file(&dir, "big.jsonl", content.as_bytes());
        let mut p = open(&path, FileFormat::Jsonl, false);
        let (records, dead) = drain(&mut p, 4096);
        assert!(dead.is_empty());
        assert_eq!(records.len(), 60_000);
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.fields[1], Value::Int(i as i64));
        }
    }

    #[test]
    fn byte_order_mark_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(&dir, "b.jsonl", b"\xEF\xBB\xBF{\"ts\":1700000000000}\n");
        let mut p = open(&path, FileFormat::Jsonl, false);
        assert_eq!(pos(&p), 3);
        let (records, dead) = drain(&mut p, 10);
        assert_eq!((records.len(), dead.len()), (1, 0));
    }

    #[test]
    fn csv_header_positions_and_seek() {
        let dir = tempfile::tempdir().unwrap();
        let content =
            "ts,key,value\r\n1700000000001,a,1\r\n1700000000002,b,x\r\n1700000000003,c\r\n";
        let path = write_file(&dir, "a.csv", content.as_bytes());
        let config = FileSourceConfig {
            path: Some(path.clone()),
            ..Default::default()
        };
        assert_eq!(config.format_of(&path), FileFormat::Csv);
        let mut parts = open_file_source("events", &config, &ctx("ts")).unwrap();
        let p = &mut parts[0];
        assert_eq!(p.position(), 14u64.to_be_bytes());
        let mut batch = SourceBatch::default();
        assert_eq!(p.poll(&mut batch, 2).unwrap(), PollStatus::Data);
        assert_eq!(batch.records.len(), 2);
        assert_eq!(batch.records[1].fields[1], Value::Str("x".into()));
        let after_two = p.position();
        let mut batch = SourceBatch::default();
        p.poll(&mut batch, 10).unwrap();
        assert_eq!(batch.dead_letters.len(), 1);
        assert_eq!(
            batch.dead_letters[0].error,
            "CSV row has 2 fields, the header has 3"
        );
        // A fresh partition resumes after the second row; position 0 means the first row.
        let mut q = open(&path, FileFormat::Csv, false);
        q.seek(&after_two).unwrap();
        let (records, dead) = drain(&mut q, 10);
        assert_eq!((records.len(), dead.len()), (0, 1));
        q.seek(&0u64.to_be_bytes()).unwrap();
        assert_eq!(pos(&q), 14);
        let (records, _) = drain(&mut q, 10);
        assert_eq!(records.len(), 2);
    }

    #[test]
    fn csv_without_time_column_fails_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(&dir, "a.csv", b"key,value\na,1\n");
        let err = FilePartition::open("events", &path, FileFormat::Csv, false, &ctx("ts"))
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("no event time column `ts`"),
            "{err}"
        );
    }

    #[test]
    fn bad_positions_are_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(&dir, "a.jsonl", JSONL.as_bytes());
        let mut p = open(&path, FileFormat::Jsonl, false);
        assert!(matches!(p.seek(&[1, 2, 3]), Err(SourceError::Fatal(_))));
        assert!(matches!(
            p.seek(&10_000u64.to_be_bytes()),
            Err(SourceError::Fatal(_))
        ));
        assert!(FilePartition::open(
            "events",
            "/nonexistent/x.jsonl",
            FileFormat::Jsonl,
            false,
            &ctx("ts")
        )
        .is_err());
    }

    #[test]
    fn follow_waits_for_complete_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(&dir, "f.jsonl", b"");
        let mut p = open(&path, FileFormat::Jsonl, true);
        let mut batch = SourceBatch::default();
        assert_eq!(p.poll(&mut batch, 10).unwrap(), PollStatus::Idle);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"ts\":1700000000001}\n{\"ts\":17000")
            .unwrap();
        f.flush().unwrap();
        assert_eq!(p.poll(&mut batch, 10).unwrap(), PollStatus::Data);
        assert_eq!(batch.records.len(), 1);
        assert_eq!(p.poll(&mut batch, 10).unwrap(), PollStatus::Idle);
        assert_eq!(batch.records.len(), 1);
        f.write_all(b"00000002}\n").unwrap();
        f.flush().unwrap();
        assert_eq!(p.poll(&mut batch, 10).unwrap(), PollStatus::Data);
        assert_eq!(batch.records.len(), 2);
        assert_eq!(batch.records[1].time, 1_700_000_000_002);
    }

    #[test]
    fn follow_csv_header_arrives_later() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(&dir, "f.csv", b"");
        let mut p = open(&path, FileFormat::Csv, true);
        let mut batch = SourceBatch::default();
        assert_eq!(p.poll(&mut batch, 10).unwrap(), PollStatus::Idle);
        std::fs::write(&path, b"ts,key\n1700000000001,a\n").unwrap();
        assert_eq!(p.poll(&mut batch, 10).unwrap(), PollStatus::Data);
        assert_eq!(batch.records.len(), 1);
        assert_eq!(pos(&p), 23);
    }

    #[test]
    fn empty_files_end() {
        let dir = tempfile::tempdir().unwrap();
        for (name, format) in [("e.jsonl", FileFormat::Jsonl), ("e.csv", FileFormat::Csv)] {
            let path = write_file(&dir, name, b"");
            let mut p = open(&path, format, false);
            let (records, dead) = drain(&mut p, 10);
            assert!(records.is_empty() && dead.is_empty());
        }
        let path = write_file(&dir, "h.csv", b"ts,key");
        let (records, _) = drain(&mut open(&path, FileFormat::Csv, false), 10);
        assert!(records.is_empty());
    }

    #[test]
    fn over_long_line_becomes_dead_letter() {
        let dir = tempfile::tempdir().unwrap();
        let mut content = b"{\"ts\":1700000000001}\n".to_vec();
        let long_at = content.len();
        content.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
        content.extend_from_slice(b"\n{\"ts\":1700000000002}\n");
        content.extend(std::iter::repeat_n(b'y', MAX_LINE + 5));
        let path = write_file(&dir, "long.jsonl", &content);
        let mut p = open(&path, FileFormat::Jsonl, false);
        let (records, dead) = drain(&mut p, 10);
        assert_eq!(records.len(), 2);
        assert_eq!(dead.len(), 2);
        assert_eq!(dead[0].offset, long_at.to_string());
        assert_eq!(dead[0].raw.len(), LONG_LINE_PREFIX);
        assert!(dead[0]
            .error
            .contains(&format!("line of {} bytes", MAX_LINE + 10)));
        assert!(dead[1]
            .error
            .contains(&format!("line of {} bytes", MAX_LINE + 5)));
        assert!(p.buf.len() <= MAX_LINE + 2 * READ_SIZE);
    }

    #[test]
    fn several_paths_are_several_partitions() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_file(&dir, "a.jsonl", b"{\"ts\":1700000000001}\n");
        let b = write_file(&dir, "b.jsonl", b"{\"ts\":1700000000002}\n");
        let config = FileSourceConfig {
            path: Some(a.clone()),
            paths: vec![b.clone()],
            ..Default::default()
        };
        let parts = open_file_source("events", &config, &ctx("ts")).unwrap();
        let ids: Vec<_> = parts.iter().map(|p| p.id().to_owned()).collect();
        assert_eq!(ids, [format!("file:{a}"), format!("file:{b}")]);
    }

    #[test]
    fn newline_search() {
        let mut hay = vec![b'a'; 40];
        assert_eq!(find_newline(&hay), None);
        for i in 0..40 {
            hay[i] = b'\n';
            assert_eq!(find_newline(&hay), Some(i));
            assert_eq!(find_newline(&hay[..i]), None);
            hay[i] = 0x8a;
        }
    }

    #[test]
    fn config_from_options() {
        let opts = |v: serde_json::Value| v.as_object().unwrap().clone();
        let c = FileSourceConfig::from_options(
            "sources.in",
            &opts(serde_json::json!({"paths": ["a.jsonl", "b.csv"], "follow": true})),
        )
        .unwrap();
        assert_eq!(c.files(), ["a.jsonl", "b.csv"]);
        assert_eq!(c.format_of("a.jsonl"), FileFormat::Jsonl);
        assert_eq!(c.format_of("b.CSV"), FileFormat::Csv);
        let c = FileSourceConfig::from_options(
            "sources.in",
            &opts(serde_json::json!({"path": "a.txt", "format": "csv"})),
        )
        .unwrap();
        assert_eq!(c.format_of("a.txt"), FileFormat::Csv);
        let issues = FileSourceConfig::from_options(
            "sources.in",
            &opts(serde_json::json!({"pth": "a", "format": "xml", "follow": 1})),
        )
        .unwrap_err();
        let mut issues = issues;
        issues.sort_by(|a, b| a.path.cmp(&b.path));
        let paths: Vec<_> = issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            paths,
            ["sources.in.follow", "sources.in.format", "sources.in.pth"]
        );
        assert!(
            issues[2].message.contains("unknown field `pth`"),
            "{}",
            issues[2].message
        );
        let issues =
            FileSourceConfig::from_options("sources.in", &opts(serde_json::json!({}))).unwrap_err();
        assert_eq!(issues[0].path, "sources.in");
        let issues = FileSourceConfig::from_options(
            "sources.in",
            &opts(serde_json::json!({"paths": ["a", ""]})),
        )
        .unwrap_err();
        assert_eq!(issues[0].path, "sources.in.paths[1]");
    }
}
