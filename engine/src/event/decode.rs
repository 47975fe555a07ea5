//! Decoding JSON lines and CSV rows into records.
//!
//! Both decoders extract only the fields a pipeline references (the context's [`FieldSlots`])
//! plus the event-time field, and skip everything else without allocating. They never panic on
//! any input: every malformed line becomes a [`DecodeError`] that names what is wrong and where.
//!
//! JSON rules:
//! - one top-level object per line; surrounding whitespace is allowed, anything after the
//!   object is an error;
//! - strings are validated (UTF-8, control characters, escapes incl. `\uXXXX` surrogate pairs)
//!   and become [`Value::Str`];
//! - integers that fit in `i64` become [`Value::Int`] (`-0` is `Int(0)`); fractions, exponents
//!   and integers beyond `i64` become [`Value::Float`]; numbers beyond `f64` are an error;
//! - a wanted field whose value is an object or array is kept as a [`Value::Str`] holding the
//!   raw JSON text of that value (so it can still be grouped on or forwarded);
//! - duplicate keys: the last occurrence wins;
//! - nesting deeper than [`MAX_DEPTH`] is rejected.
//!
//! CSV rules: see [`CsvDecoder`].
//!
//! [`FieldSlots`]: crate::event::FieldSlots

use std::time::{SystemTime, UNIX_EPOCH};

use compact_str::CompactString;

use crate::event::{Fields, Record, Timestamp, Value, INLINE_FIELDS};
use crate::runtime::DecodeContext;
use crate::topology::TimeFormat;

/// Why a record could not be decoded; becomes the dead letter's error text.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

/// The deepest nesting of objects and arrays a JSON line may have.
pub const MAX_DEPTH: u32 = 128;

/// The earliest accepted event time: 0001-01-01T00:00:00Z.
pub const MIN_EVENT_TIME: Timestamp = -62_135_596_800_000;
/// The latest accepted event time: 9999-12-31T23:59:59.999Z.
pub const MAX_EVENT_TIME: Timestamp = 253_402_300_799_999;

/// The wall clock in milliseconds since the Unix epoch.
pub fn wall_clock_ms() -> Timestamp {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Timestamp)
        .unwrap_or(0)
}

/// `n` null field values. Built from an inline array when it fits: much cheaper than cloning
/// `Null` into place one by one on the hot path.
#[inline]
fn null_fields(n: usize) -> Fields {
    if n <= INLINE_FIELDS {
        Fields::from_buf_and_len([const { Value::Null }; INLINE_FIELDS], n)
    } else {
        Fields::from_elem(Value::Null, n)
    }
}

/// One field the JSON decoder looks for.
#[derive(Debug, Clone)]
struct Wanted {
    name: Box<[u8]>,
    /// The first 8 bytes of the name: most keys are told apart without a full comparison.
    head: u64,
    slot: Option<usize>,
    is_time: bool,
}

impl Wanted {
    fn new(name: &[u8], slot: Option<usize>, is_time: bool) -> Self {
        Wanted {
            name: name.into(),
            head: head8(name),
            slot,
            is_time,
        }
    }

    #[inline]
    fn matches(&self, key: &[u8], key_head: u64) -> bool {
        self.head == key_head
            && self.name.len() == key.len()
            && (key.len() <= 8 || self.name.get(8..) == key.get(8..))
    }
}

/// Up to the first 8 bytes of `bytes`, zero-padded, as a word.
#[inline]
fn head8(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    let n = bytes.len().min(8);
    if let (Some(dst), Some(src)) = (word.get_mut(..n), bytes.get(..n)) {
        dst.copy_from_slice(src);
    }
    u64::from_le_bytes(word)
}

/// [`head8`] of `bytes[start..end]`, read as one word when 8 bytes of `bytes` follow `start`
/// (for a key, the rest of the object usually does), with the bytes past `end` masked off;
/// else copied. Spares the variable-length copy, whose stores the following whole-word load
/// cannot be forwarded from.
#[inline]
fn head8_in(bytes: &[u8], start: usize, end: usize) -> u64 {
    let len = end.saturating_sub(start);
    match bytes.get(start..).and_then(|rest| rest.first_chunk::<8>()) {
        Some(word) if len >= 8 => u64::from_le_bytes(*word),
        Some(word) => u64::from_le_bytes(*word) & ((1u64 << (8 * len)) - 1),
        None => head8(bytes.get(start..end).unwrap_or(&[])),
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Flags (high bit per byte) the bytes of `word` equal to `byte`; the lowest flag is exact.
#[inline]
fn bytes_equal(word: u64, byte: u8) -> u64 {
    let x = word ^ (u64::from(byte) * ONES);
    x.wrapping_sub(ONES) & !x & HIGHS
}

/// How the event time of a record is found.
#[derive(Debug, Clone)]
struct TimeSource {
    field: CompactString,
    format: TimeFormat,
    processing_time: bool,
    /// The slot of the time field when the pipeline also references it.
    slot: Option<usize>,
}

impl TimeSource {
    fn new(ctx: &DecodeContext) -> Self {
        TimeSource {
            field: ctx.event_time.field.as_str().into(),
            format: ctx.event_time.format,
            // A source timestamp is set by the connector after decoding; until then the record
            // carries the read time, as with processing time.
            processing_time: ctx.event_time.processing_time || ctx.event_time.source_timestamp,
            slot: ctx.slots.get(&ctx.event_time.field),
        }
    }

    /// Resolves the record's time from the time value found (`seen`), which is either in
    /// `fields` (when the time field is a slot) or in `separate`.
    fn resolve(
        &self,
        seen: bool,
        fields: &Fields,
        separate: &Value,
    ) -> Result<Timestamp, DecodeError> {
        if self.processing_time {
            return Ok(wall_clock_ms());
        }
        if !seen {
            return Err(DecodeError(format!(
                "missing event time field `{}`",
                self.field
            )));
        }
        let value = match self.slot {
            Some(s) => fields.get(s).unwrap_or(&Value::Null),
            None => separate,
        };
        // The common case, an integer of milliseconds, without the general path's dispatch.
        if let Value::Int(ms) = *value {
            let millis = match self.format {
                TimeFormat::EpochMillis => (0..=MAX_EVENT_TIME).contains(&ms),
                TimeFormat::Auto => (AUTO_MILLIS_FROM..=AUTO_MILLIS_TO).contains(&ms),
                _ => false,
            };
            if millis {
                return Ok(ms);
            }
        }
        parse_time(value, self.format)
            .map_err(|e| DecodeError(format!("event time field `{}`: {}", self.field, e.0)))
    }
}

/// What a member key resolves to: the slot it fills and whether it is the event-time field;
/// `None` for a key no slot wants.
type Target = Option<(Option<usize>, bool)>;

/// A member key as the previous line had it at the same position.
#[derive(Debug, Clone, Default)]
struct KnownKey {
    /// The key's raw text from its opening quote through the colon (`"ts_ms":`), with no
    /// escape and no whitespace before the colon: the same bytes are the same key. Empty
    /// when nothing is remembered.
    text: Vec<u8>,
    /// The first 16 bytes of `text` as a word, zero-padded, and the mask of its bytes.
    word: u128,
    mask: u128,
    target: Target,
}

impl KnownKey {
    /// Remembers `text` (empty: nothing) as the key whose member fills `target`.
    fn set(&mut self, text: &[u8], target: Target) {
        self.text.clear();
        self.text.extend_from_slice(text);
        let mut head = [0u8; 16];
        let n = text.len().min(16);
        if let (Some(dst), Some(src)) = (head.get_mut(..n), text.get(..n)) {
            dst.copy_from_slice(src);
        }
        self.word = u128::from_le_bytes(head);
        self.mask = u128::MAX.checked_shr(8 * (16 - n as u32)).unwrap_or(0);
        self.target = target;
    }

    /// Whether `bytes` holds the remembered text at `pos`. Compared as one word where the
    /// line has room for it (a library call costs more than the comparison of a short key).
    #[inline]
    fn is_at(&self, bytes: &[u8], pos: usize) -> bool {
        let len = self.text.len();
        let rest = bytes.get(pos..).unwrap_or(&[]);
        if len <= 8 {
            if let Some(word) = rest.first_chunk::<8>() {
                return len > 0 && u128::from(u64::from_le_bytes(*word)) & self.mask == self.word;
            }
        } else if len <= 16 {
            if let Some(word) = rest.first_chunk::<16>() {
                return u128::from_le_bytes(*word) & self.mask == self.word;
            }
        }
        len > 0 && rest.get(..len) == Some(self.text.as_slice())
    }
}

/// Member positions whose keys are remembered; later members are always looked up.
const KNOWN_KEYS: usize = 32;

/// Decodes one JSON object per call, extracting only the fields in the context's slots.
#[derive(Debug)]
pub struct JsonDecoder {
    wanted: Vec<Wanted>,
    nslots: usize,
    time: TimeSource,
    /// Reused buffer for keys and strings that contain escapes.
    scratch: Vec<u8>,
    /// The keys of the last line, by member position. Lines of one stream usually repeat
    /// their keys in the same order, so a key is first compared with the one remembered for
    /// its position: on a match, scanning and looking it up are skipped.
    known: Vec<KnownKey>,
}

impl JsonDecoder {
    /// A decoder for `ctx`.
    pub fn new(ctx: &DecodeContext) -> Self {
        let time = TimeSource::new(ctx);
        let mut wanted: Vec<Wanted> = ctx
            .slots
            .names()
            .iter()
            .enumerate()
            .map(|(slot, name)| {
                let is_time = !time.processing_time && *name == time.field;
                Wanted::new(name.as_bytes(), Some(slot), is_time)
            })
            .collect();
        if !time.processing_time && time.slot.is_none() {
            wanted.push(Wanted::new(time.field.as_bytes(), None, true));
        }
        JsonDecoder {
            wanted,
            nslots: ctx.slots.len(),
            time,
            scratch: Vec::new(),
            known: Vec::new(),
        }
    }

    /// The target of the key at `p.pos` (its opening quote), with `p` moved past its colon:
    /// the remembered key of member `member` when the input repeats its text, else scanned,
    /// looked up and remembered.
    #[inline]
    fn key_target(&mut self, p: &mut Parser<'_>, member: usize) -> Result<Target, DecodeError> {
        if let Some(known) = self.known.get(member) {
            if known.is_at(p.bytes, p.pos) {
                p.pos += known.text.len();
                return Ok(known.target);
            }
        }
        if p.peek() != Some(b'"') {
            return Err(p.err("expected a string key"));
        }
        let quote = p.pos;
        p.pos += 1;
        let key = p.key(&mut self.scratch)?;
        let target = {
            let (key_bytes, key_head): (&[u8], u64) = match key {
                KeyRef::Raw(a, b) => (p.bytes.get(a..b).unwrap_or(&[]), head8_in(p.bytes, a, b)),
                KeyRef::Scratch => (&self.scratch, head8(&self.scratch)),
            };
            self.wanted
                .iter()
                .find(|w| w.matches(key_bytes, key_head))
                .map(|w| (w.slot, w.is_time))
        };
        let plain = matches!(key, KeyRef::Raw(..)) && p.peek() == Some(b':');
        p.ws();
        if p.peek() != Some(b':') {
            return Err(p.err("expected ':' after key"));
        }
        p.pos += 1;
        if member < KNOWN_KEYS {
            if self.known.len() <= member {
                self.known.resize_with(member + 1, KnownKey::default);
            }
            if let Some(known) = self.known.get_mut(member) {
                // Only a key without escapes and with its colon right after the closing quote:
                // then equal text means an equal key.
                let text = if plain {
                    p.bytes.get(quote..p.pos).unwrap_or(&[])
                } else {
                    &[]
                };
                known.set(text, target);
            }
        }
        Ok(target)
    }

    /// Decodes one JSON object (a line without its newline).
    pub fn decode(&mut self, bytes: &[u8]) -> Result<Record, DecodeError> {
        let mut fields = null_fields(self.nslots);
        let mut time_value = Value::Null;
        let mut time_seen = false;
        let mut p = Parser::new(bytes);
        p.ws();
        if p.peek() != Some(b'{') {
            return Err(p.err("expected a JSON object"));
        }
        p.pos += 1;
        p.ws();
        if p.peek() == Some(b'}') {
            p.pos += 1;
        } else {
            let mut member = 0;
            loop {
                let found = self.key_target(&mut p, member)?;
                member += 1;
                p.ws();
                match found {
                    Some((slot, is_time)) => {
                        let v = p.value(&mut self.scratch)?;
                        if is_time {
                            time_seen = true;
                        }
                        match slot {
                            Some(s) => {
                                if let Some(f) = fields.get_mut(s) {
                                    *f = v;
                                }
                            }
                            None => time_value = v,
                        }
                    }
                    None => p.skip_value()?,
                }
                p.ws();
                match p.peek() {
                    Some(b',') => {
                        p.pos += 1;
                        p.ws();
                    }
                    Some(b'}') => {
                        p.pos += 1;
                        break;
                    }
                    _ => return Err(p.err("expected ',' or '}' after a member")),
                }
            }
        }
        p.ws();
        if p.pos != p.bytes.len() {
            return Err(p.err("unexpected characters after the object"));
        }
        let time = self.time.resolve(time_seen, &fields, &time_value)?;
        Ok(Record { time, fields })
    }
}

/// Where a parsed key's unescaped bytes are.
#[derive(Clone, Copy)]
enum KeyRef {
    /// A range of the input (no escapes).
    Raw(usize, usize),
    /// The decoder's scratch buffer.
    Scratch,
}

/// The result of scanning a JSON number.
struct NumScan {
    start: usize,
    end: usize,
    /// The decimal digits (integer and fraction) as an integer; exact when `digits <= 19`.
    mantissa: u64,
    digits: usize,
    /// The power of ten to apply to `mantissa` (exponent minus fraction digits).
    exp10: i64,
    negative: bool,
    is_float: bool,
}

/// Powers of ten that are exact in an `f64`.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// `10^n` for the digit counts of one word, `n` in `0..=8`.
const POW10_U64: [u64; 9] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
];

/// The number whose 8 decimal digits are the bytes of `v` (values 0..=9, the first digit in
/// the lowest byte).
#[inline]
fn eight_digits(v: u64) -> u64 {
    let v = v.wrapping_mul(10).wrapping_add(v >> 8);
    ((v & 0x0000_00FF_0000_00FF).wrapping_mul(0x000F_4240_0000_0064))
        .wrapping_add(((v >> 16) & 0x0000_00FF_0000_00FF).wrapping_mul(0x0000_2710_0000_0001))
        >> 32
}

/// A strict, allocation-free JSON scanner over one line. UTF-8 is validated inside strings
/// only; outside them the grammar admits ASCII alone.
struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Parser { bytes, pos: 0 }
    }

    /// The text of `bytes[start..end]`, which the scanner has validated.
    fn text(&self, start: usize, end: usize) -> Result<&'a str, DecodeError> {
        let bytes = self.bytes.get(start..end).unwrap_or_default();
        std::str::from_utf8(bytes)
            .map_err(|e| self.err_at(start + e.valid_up_to(), "invalid UTF-8"))
    }

    /// The text of `bytes[start..end]`, a run [`Parser::plain_run`] returned: that scan has
    /// already validated it as UTF-8, so it is not validated a second time.
    #[inline]
    fn plain_text(&self, start: usize, end: usize) -> &'a str {
        let bytes = self.bytes.get(start..end).unwrap_or_default();
        debug_assert!(std::str::from_utf8(bytes).is_ok());
        // SAFETY: `plain_run` stops at the first byte that is not plain ASCII or the start of
        // a multi-byte character it validated whole (`utf8_char`), so every run it returns is
        // a sequence of complete, valid UTF-8 characters.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    #[cold]
    fn err(&self, what: &str) -> DecodeError {
        self.err_at(self.pos, what)
    }

    #[cold]
    fn err_at(&self, pos: usize, what: &str) -> DecodeError {
        match self.bytes.get(pos) {
            Some(&b) if b.is_ascii_graphic() => DecodeError(format!(
                "invalid JSON at byte {pos}: {what} (found '{}')",
                b as char
            )),
            Some(b) => DecodeError(format!(
                "invalid JSON at byte {pos}: {what} (found byte 0x{b:02x})"
            )),
            None => DecodeError(format!(
                "invalid JSON at byte {pos}: {what} (found end of input)"
            )),
        }
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// Scans a string from `pos` (after its opening quote) up to the first quote, backslash
    /// or control character, validating UTF-8 on the way; returns the end of the plain run.
    #[inline]
    fn plain_run(&self) -> Result<usize, DecodeError> {
        let mut i = self.pos;
        loop {
            i = self.ascii_run(i);
            match self.bytes.get(i) {
                Some(&b) if b >= 0x80 => i += self.utf8_char(i)?,
                _ => return Ok(i),
            }
        }
    }

    /// The end of the run of plain ASCII string bytes starting at `i`.
    #[inline]
    fn ascii_run(&self, mut i: usize) -> usize {
        // Eight bytes at a time; the lowest flag over all tests is always a true match.
        while let Some(chunk) = self.bytes.get(i..i + 8) {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(chunk);
            let word = u64::from_le_bytes(bytes);
            let control = word.wrapping_sub(0x20 * ONES) & !word & HIGHS;
            let stop =
                bytes_equal(word, b'"') | bytes_equal(word, b'\\') | control | (word & HIGHS);
            if stop != 0 {
                return i + (stop.trailing_zeros() / 8) as usize;
            }
            i += 8;
        }
        while let Some(&b) = self.bytes.get(i) {
            if b == b'"' || b == b'\\' || !(0x20..0x80).contains(&b) {
                break;
            }
            i += 1;
        }
        i
    }

    /// Validates the multi-byte UTF-8 character at `i`; returns its length.
    fn utf8_char(&self, i: usize) -> Result<usize, DecodeError> {
        let len = match self.bytes.get(i) {
            Some(0xC2..=0xDF) => 2,
            Some(0xE0..=0xEF) => 3,
            Some(0xF0..=0xF4) => 4,
            _ => 0,
        };
        match self.bytes.get(i..i + len) {
            Some(c) if len > 0 && std::str::from_utf8(c).is_ok() => Ok(len),
            _ => Err(self.err_at(i, "invalid UTF-8 in string")),
        }
    }

    /// Parses a key (opening quote consumed). Keys without escapes are returned as a range of
    /// the input; escaped keys are unescaped into `scratch`.
    fn key(&mut self, scratch: &mut Vec<u8>) -> Result<KeyRef, DecodeError> {
        let start = self.pos;
        let end = self.plain_run()?;
        self.pos = end;
        match self.peek() {
            Some(b'"') => {
                self.pos += 1;
                Ok(KeyRef::Raw(start, end))
            }
            Some(b'\\') => {
                scratch.clear();
                scratch.extend_from_slice(self.bytes.get(start..end).unwrap_or(&[]));
                self.escaped_rest(scratch)?;
                Ok(KeyRef::Scratch)
            }
            _ => Err(self.string_err()),
        }
    }

    #[cold]
    fn string_err(&self) -> DecodeError {
        match self.peek() {
            None => self.err("unterminated string"),
            _ => self.err("control character in string"),
        }
    }

    /// Continues a string at a backslash, appending the unescaped text to `out`, through the
    /// closing quote.
    fn escaped_rest(&mut self, out: &mut Vec<u8>) -> Result<(), DecodeError> {
        loop {
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let c = match self.peek() {
                        Some(c) => c,
                        None => return Err(self.err("unterminated escape")),
                    };
                    self.pos += 1;
                    match c {
                        b'"' => out.push(b'"'),
                        b'\\' => out.push(b'\\'),
                        b'/' => out.push(b'/'),
                        b'b' => out.push(0x08),
                        b'f' => out.push(0x0c),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'u' => {
                            let ch = self.unicode_escape()?;
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        }
                        _ => {
                            self.pos -= 1;
                            return Err(self.err("invalid escape"));
                        }
                    }
                }
                Some(_) => {
                    let start = self.pos;
                    let end = self.plain_run()?;
                    if end == start {
                        return Err(self.string_err());
                    }
                    out.extend_from_slice(self.bytes.get(start..end).unwrap_or(&[]));
                    self.pos = end;
                }
                None => return Err(self.err("unterminated string")),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, DecodeError> {
        let mut v = 0u32;
        for _ in 0..4 {
            let d = match self.peek() {
                Some(c @ b'0'..=b'9') => c - b'0',
                Some(c @ b'a'..=b'f') => c - b'a' + 10,
                Some(c @ b'A'..=b'F') => c - b'A' + 10,
                _ => return Err(self.err("expected 4 hex digits in \\u escape")),
            };
            v = v * 16 + u32::from(d);
            self.pos += 1;
        }
        Ok(v)
    }

    /// Parses the hex digits after `\u`, combining surrogate pairs.
    fn unicode_escape(&mut self) -> Result<char, DecodeError> {
        let first = self.hex4()?;
        let code = match first {
            0xD800..=0xDBFF => {
                if self.bytes.get(self.pos..self.pos + 2) != Some(b"\\u") {
                    return Err(self.err("unpaired high surrogate in \\u escape"));
                }
                self.pos += 2;
                let low = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&low) {
                    return Err(self.err("invalid low surrogate in \\u escape"));
                }
                0x10000 + ((first - 0xD800) << 10) + (low - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(self.err("unpaired low surrogate in \\u escape")),
            c => c,
        };
        char::from_u32(code).ok_or_else(|| self.err("invalid \\u escape"))
    }

    /// Parses a string value (opening quote consumed).
    fn string_value(&mut self, scratch: &mut Vec<u8>) -> Result<Value, DecodeError> {
        let start = self.pos;
        let end = self.plain_run()?;
        self.pos = end;
        match self.peek() {
            Some(b'"') => {
                self.pos += 1;
                Ok(Value::Str(CompactString::new(self.plain_text(start, end))))
            }
            Some(b'\\') => {
                scratch.clear();
                scratch.extend_from_slice(self.bytes.get(start..end).unwrap_or(&[]));
                self.escaped_rest(scratch)?;
                match std::str::from_utf8(scratch) {
                    Ok(s) => Ok(Value::Str(CompactString::new(s))),
                    // Unreachable in practice: the input is valid UTF-8 and escapes produce chars.
                    Err(_) => Err(self.err("invalid UTF-8 in string")),
                }
            }
            _ => Err(self.string_err()),
        }
    }

    /// Skips a string (opening quote consumed), validating it.
    fn skip_string(&mut self) -> Result<(), DecodeError> {
        loop {
            self.pos = self.plain_run()?;
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    self.pos += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                            self.pos += 1
                        }
                        Some(b'u') => {
                            self.pos += 1;
                            self.unicode_escape()?;
                        }
                        _ => return Err(self.err("invalid escape")),
                    }
                }
                _ => return Err(self.string_err()),
            }
        }
    }

    /// Consumes decimal digits, folding them into `mantissa` (wrapping: callers only trust it
    /// for at most 19 digits); returns how many there were.
    #[inline]
    fn digits(&mut self, mantissa: &mut u64) -> usize {
        let start = self.pos;
        let mut i = self.pos;
        let mut m = *mantissa;
        // A word of 8 bytes at a time while 8 remain (the SWAR technique of simdjson's number
        // parser), the digits at its start converted at once however many there are.
        while let Some(chunk) = self.bytes.get(i..i + 8).and_then(|c| c.first_chunk::<8>()) {
            // Digits become their values 0..=9; any other byte gets its high bit set. A carry
            // into the next byte comes only from a non-digit, past the first one, which is all
            // that is read.
            let x = u64::from_le_bytes(*chunk) ^ (u64::from(b'0') * ONES);
            let non_digit = (x.wrapping_add(0x76 * ONES) | x) & HIGHS;
            let n = (non_digit.trailing_zeros() / 8) as usize;
            if n == 0 {
                break;
            }
            // The `n` digits moved to the word's top as the last digits of an 8-digit number.
            let value = eight_digits(x << (8 * (8 - n)));
            m = m.wrapping_mul(POW10_U64[n]).wrapping_add(value);
            i += n;
            if n < 8 {
                *mantissa = m;
                self.pos = i;
                return i - start;
            }
        }
        while let Some(&c) = self.bytes.get(i) {
            let d = c.wrapping_sub(b'0');
            if d > 9 {
                break;
            }
            m = m.wrapping_mul(10).wrapping_add(u64::from(d));
            i += 1;
        }
        *mantissa = m;
        self.pos = i;
        i - start
    }

    /// Scans a number by the JSON grammar.
    fn scan_number(&mut self) -> Result<NumScan, DecodeError> {
        let start = self.pos;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.pos += 1;
        }
        let mut mantissa = 0u64;
        let int_digits = match self.peek() {
            Some(b'0') => {
                self.pos += 1;
                if let Some(b'0'..=b'9') = self.peek() {
                    return Err(self.err("leading zero in number"));
                }
                1
            }
            Some(b'1'..=b'9') => self.digits(&mut mantissa),
            _ => return Err(self.err("expected a digit")),
        };
        let mut is_float = false;
        let mut frac_digits = 0;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            frac_digits = self.digits(&mut mantissa);
            if frac_digits == 0 {
                return Err(self.err("expected a digit after the decimal point"));
            }
            is_float = true;
        }
        let mut exp10 = -(frac_digits as i64);
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            let exp_negative = match self.peek() {
                Some(b'-') => {
                    self.pos += 1;
                    true
                }
                Some(b'+') => {
                    self.pos += 1;
                    false
                }
                _ => false,
            };
            let mut exp = 0u64;
            let n = self.digits(&mut exp);
            if n == 0 {
                return Err(self.err("expected a digit in the exponent"));
            }
            // Beyond 4 digits the fast path is out of reach anyway; keep it obviously in range.
            let exp = if n > 4 { 100_000 } else { exp as i64 };
            exp10 += if exp_negative { -exp } else { exp };
            is_float = true;
        }
        Ok(NumScan {
            start,
            end: self.pos,
            mantissa,
            digits: int_digits + frac_digits,
            exp10,
            negative,
            is_float,
        })
    }

    fn number_value(&mut self) -> Result<Value, DecodeError> {
        let n = self.scan_number()?;
        if n.digits <= 19 {
            let m = n.mantissa;
            if !n.is_float {
                if !n.negative && m <= i64::MAX as u64 {
                    return Ok(Value::Int(m as i64));
                }
                if n.negative && m <= (i64::MAX as u64) + 1 {
                    return Ok(Value::Int((m as i64).wrapping_neg()));
                }
            } else if m <= 1 << 53 {
                // Clinger's fast path: both operands are exact, so one rounding is correct.
                let power = POW10.get(n.exp10.unsigned_abs() as usize).copied();
                if let Some(power) = power {
                    let f = if n.exp10 < 0 {
                        m as f64 / power
                    } else {
                        m as f64 * power
                    };
                    return Ok(Value::Float(if n.negative { -f } else { f }));
                }
            }
        }
        let text = self.text(n.start, n.end)?;
        match text.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Value::Float(f)),
            _ => {
                self.pos = n.start;
                Err(self.err("number out of range"))
            }
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), DecodeError> {
        if self.bytes.get(self.pos..self.pos + word.len()) == Some(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.err("expected a value"))
        }
    }

    /// Parses a value of a wanted field.
    fn value(&mut self, scratch: &mut Vec<u8>) -> Result<Value, DecodeError> {
        match self.peek() {
            Some(b'"') => {
                self.pos += 1;
                self.string_value(scratch)
            }
            Some(b'-' | b'0'..=b'9') => self.number_value(),
            Some(b't') => self.literal(b"true").map(|_| Value::Bool(true)),
            Some(b'f') => self.literal(b"false").map(|_| Value::Bool(false)),
            Some(b'n') => self.literal(b"null").map(|_| Value::Null),
            Some(b'{' | b'[') => {
                let start = self.pos;
                self.skip_value()?;
                Ok(Value::Str(CompactString::new(self.text(start, self.pos)?)))
            }
            _ => Err(self.err("expected a value")),
        }
    }

    /// Skips one value of any kind, validating it; iterative so deep nesting cannot overflow
    /// the stack.
    fn skip_value(&mut self) -> Result<(), DecodeError> {
        // Bit d of `stack` is 1 when the container at depth d is an object.
        let mut stack: u128 = 0;
        let mut depth: u32 = 0;
        loop {
            // A value is expected here.
            self.ws();
            match self.peek() {
                Some(b'{') => {
                    self.pos += 1;
                    self.ws();
                    if self.peek() == Some(b'}') {
                        self.pos += 1;
                    } else {
                        if depth >= MAX_DEPTH {
                            return Err(self.err("nesting too deep"));
                        }
                        stack |= 1u128 << depth;
                        depth += 1;
                        self.member_key()?;
                        continue;
                    }
                }
                Some(b'[') => {
                    self.pos += 1;
                    self.ws();
                    if self.peek() == Some(b']') {
                        self.pos += 1;
                    } else {
                        if depth >= MAX_DEPTH {
                            return Err(self.err("nesting too deep"));
                        }
                        stack &= !(1u128 << depth);
                        depth += 1;
                        continue;
                    }
                }
                Some(b'"') => {
                    self.pos += 1;
                    self.skip_string()?;
                }
                Some(b'-' | b'0'..=b'9') => {
                    self.scan_number()?;
                }
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') => self.literal(b"null")?,
                _ => return Err(self.err("expected a value")),
            }
            // A value ended: close containers until one continues with another element.
            loop {
                if depth == 0 {
                    return Ok(());
                }
                let in_object = stack & (1u128 << (depth - 1)) != 0;
                self.ws();
                match self.peek() {
                    Some(b',') => {
                        self.pos += 1;
                        if in_object {
                            self.ws();
                            self.member_key()?;
                        }
                        break;
                    }
                    Some(b'}') if in_object => {
                        self.pos += 1;
                        depth -= 1;
                    }
                    Some(b']') if !in_object => {
                        self.pos += 1;
                        depth -= 1;
                    }
                    _ if in_object => return Err(self.err("expected ',' or '}' in object")),
                    _ => return Err(self.err("expected ',' or ']' in array")),
                }
            }
        }
    }

    /// Skips `"key" :` inside a skipped object.
    fn member_key(&mut self) -> Result<(), DecodeError> {
        if self.peek() != Some(b'"') {
            return Err(self.err("expected a string key"));
        }
        self.pos += 1;
        self.skip_string()?;
        self.ws();
        if self.peek() != Some(b':') {
            return Err(self.err("expected ':' after key"));
        }
        self.pos += 1;
        Ok(())
    }
}

/// What the CSV decoder does with one column.
#[derive(Debug, Clone, Copy, Default)]
struct ColumnTarget {
    slot: Option<usize>,
    is_time: bool,
}

/// Decodes CSV rows given the header row.
///
/// - The header names the columns (surrounding spaces of names are trimmed, a UTF-8 byte-order
///   mark is ignored; when a name repeats, the first column wins). Each slot takes the column
///   of its name; a slot without a column stays `Null`. The event-time column is required
///   (unless processing time is used).
/// - Fields follow RFC 4180 quoting (`"a,b"`, `"say ""hi"""`), but a row is one line: quoted
///   fields cannot span lines, since the file source splits input on newlines. A quote inside
///   an unquoted field is taken literally. A trailing `\r` is ignored.
/// - Values are typed by inference: an unquoted empty field is `Null` (a quoted one `""` is an
///   empty string), `true`/`false` are booleans, integers fitting `i64` are `Int`, other
///   decimal numbers (`1.5`, `-2e3`, integers beyond `i64`) are `Float`, everything else is a
///   string. Quoted fields are inferred the same way, since many writers quote every field.
/// - A row with a different number of fields than the header is an error.
#[derive(Debug)]
pub struct CsvDecoder {
    targets: Vec<ColumnTarget>,
    nslots: usize,
    time: TimeSource,
    time_column: Option<usize>,
    scratch: Vec<u8>,
}

/// One field of a CSV row: its raw text (quotes removed, `""` not yet unescaped) and how it
/// was written.
struct CsvField {
    start: usize,
    end: usize,
    quoted: bool,
    /// The quoted field contains `""` escapes.
    escaped: bool,
}

/// Splits a CSV row into fields, calling `f(column, field)` for each; returns the number of
/// fields.
fn split_csv_row(
    row: &[u8],
    mut f: impl FnMut(usize, &CsvField) -> Result<(), DecodeError>,
) -> Result<usize, DecodeError> {
    let mut i = 0;
    let mut col = 0;
    loop {
        let field = if row.get(i) == Some(&b'"') {
            let start = i + 1;
            let mut j = start;
            let mut escaped = false;
            loop {
                match row.get(j) {
                    Some(b'"') => {
                        if row.get(j + 1) == Some(&b'"') {
                            escaped = true;
                            j += 2;
                        } else {
                            break;
                        }
                    }
                    Some(_) => j += 1,
                    None => {
                        return Err(DecodeError(format!(
                            "invalid CSV at byte {i}: unterminated quoted field in column {} \
                             (quoted fields cannot span lines)",
                            col + 1
                        )))
                    }
                }
            }
            i = j + 1;
            match row.get(i) {
                None | Some(b',') => {}
                Some(_) => {
                    return Err(DecodeError(format!(
                        "invalid CSV at byte {i}: unexpected character after the closing quote \
                         of column {}",
                        col + 1
                    )))
                }
            }
            CsvField {
                start,
                end: j,
                quoted: true,
                escaped,
            }
        } else {
            let start = i;
            while let Some(&b) = row.get(i) {
                if b == b',' {
                    break;
                }
                i += 1;
            }
            CsvField {
                start,
                end: i,
                quoted: false,
                escaped: false,
            }
        };
        f(col, &field)?;
        col += 1;
        if row.get(i) == Some(&b',') {
            i += 1;
        } else {
            return Ok(col);
        }
    }
}

/// The text of a CSV field, unescaping `""` into `scratch` when needed.
fn csv_field_text<'a>(
    row: &'a [u8],
    field: &CsvField,
    scratch: &'a mut Vec<u8>,
) -> Result<&'a str, DecodeError> {
    let bytes = csv_field_bytes(row, field, scratch);
    csv_utf8(bytes, field)
}

fn csv_utf8<'a>(bytes: &'a [u8], field: &CsvField) -> Result<&'a str, DecodeError> {
    std::str::from_utf8(bytes).map_err(|e| {
        DecodeError(format!(
            "invalid UTF-8 at byte {} of the row",
            field.start + e.valid_up_to()
        ))
    })
}

/// The bytes of a CSV field, unescaping `""` into `scratch` when needed.
fn csv_field_bytes<'a>(row: &'a [u8], field: &CsvField, scratch: &'a mut Vec<u8>) -> &'a [u8] {
    let raw = row.get(field.start..field.end).unwrap_or(&[]);
    if field.escaped {
        scratch.clear();
        let mut k = 0;
        while let Some(&b) = raw.get(k) {
            scratch.push(b);
            // Inside a quoted field every quote is doubled.
            k += if b == b'"' { 2 } else { 1 };
        }
        scratch
    } else {
        raw
    }
}

/// Infers a CSV field's type from its bytes. Numbers in JSON syntax (the common case) are
/// parsed straight from the bytes; other text goes through [`infer_csv_text`].
fn infer_csv_value(bytes: &[u8], field: &CsvField) -> Result<Value, DecodeError> {
    match bytes {
        b"" if field.quoted => return Ok(Value::Str(CompactString::default())),
        b"" => return Ok(Value::Null),
        b"true" => return Ok(Value::Bool(true)),
        b"false" => return Ok(Value::Bool(false)),
        _ => {}
    }
    let unsigned = match bytes {
        [b'+', rest @ ..] if rest.first().is_some_and(u8::is_ascii_digit) => rest,
        _ => bytes,
    };
    if let Some(b'0'..=b'9' | b'-') = unsigned.first() {
        let mut p = Parser::new(unsigned);
        if let Ok(v) = p.number_value() {
            if p.pos == unsigned.len() {
                return Ok(v);
            }
        }
    }
    Ok(infer_csv_text(csv_utf8(bytes, field)?))
}

/// Infers the type of a non-empty CSV field that is not a plain JSON-syntax number.
fn infer_csv_text(text: &str) -> Value {
    let b = text.as_bytes();
    let digits_from = usize::from(matches!(b.first(), Some(b'-' | b'+')));
    let rest = b.get(digits_from..).unwrap_or(&[]);
    if !rest.is_empty() && rest.iter().all(u8::is_ascii_digit) {
        if let Ok(i) = text.parse::<i64>() {
            return Value::Int(i);
        }
    }
    let numeric_chars = rest
        .iter()
        .all(|c| matches!(c, b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-'));
    if numeric_chars
        && rest
            .first()
            .is_some_and(|c| c.is_ascii_digit() || *c == b'.')
    {
        if let Ok(f) = text.parse::<f64>() {
            if f.is_finite() {
                return Value::Float(f);
            }
        }
    }
    Value::Str(CompactString::new(text))
}

impl CsvDecoder {
    /// A decoder for `ctx` and the file's header row.
    pub fn new(ctx: &DecodeContext, header: &[u8]) -> Result<Self, DecodeError> {
        let header = header.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(header);
        let header = header.strip_suffix(b"\r").unwrap_or(header);
        let mut names: Vec<String> = Vec::new();
        let mut scratch = Vec::new();
        split_csv_row(header, |_, field| {
            let text = csv_field_text(header, field, &mut scratch)
                .map_err(|e| DecodeError(format!("CSV header: {}", e.0)))?;
            names.push(text.trim().to_owned());
            Ok(())
        })
        .map_err(|e| {
            if e.0.starts_with("CSV header") {
                e
            } else {
                DecodeError(format!("CSV header: {}", e.0))
            }
        })?;
        let time = TimeSource::new(ctx);
        let mut targets = vec![ColumnTarget::default(); names.len()];
        let position = |name: &str| names.iter().position(|n| n == name);
        for (slot, name) in ctx.slots.names().iter().enumerate() {
            if let Some(target) = position(name).and_then(|c| targets.get_mut(c)) {
                target.slot = Some(slot);
            }
        }
        let time_column = if time.processing_time {
            None
        } else {
            match position(&time.field) {
                Some(c) => {
                    if let Some(t) = targets.get_mut(c) {
                        t.is_time = true;
                    }
                    Some(c)
                }
                None => {
                    return Err(DecodeError(format!(
                        "CSV header has no event time column `{}` (columns: {})",
                        time.field,
                        names.join(", ")
                    )))
                }
            }
        };
        Ok(CsvDecoder {
            targets,
            nslots: ctx.slots.len(),
            time,
            time_column,
            scratch,
        })
    }

    /// The number of columns the header declares.
    pub fn columns(&self) -> usize {
        self.targets.len()
    }

    /// Decodes one row (without its newline).
    pub fn decode(&mut self, row: &[u8]) -> Result<Record, DecodeError> {
        let row = row.strip_suffix(b"\r").unwrap_or(row);
        let mut fields = null_fields(self.nslots);
        let mut time_value = Value::Null;
        let targets = &self.targets;
        let scratch = &mut self.scratch;
        let count = split_csv_row(row, |col, field| {
            let target = match targets.get(col) {
                Some(t) if t.slot.is_some() || t.is_time => *t,
                _ => return Ok(()),
            };
            let bytes = csv_field_bytes(row, field, scratch);
            let value = infer_csv_value(bytes, field)?;
            match target.slot {
                Some(s) => {
                    if let Some(f) = fields.get_mut(s) {
                        *f = value;
                    }
                }
                None => time_value = value,
            }
            Ok(())
        })?;
        if count != self.targets.len() {
            return Err(DecodeError(format!(
                "CSV row has {count} fields, the header has {}",
                self.targets.len()
            )));
        }
        let time = self
            .time
            .resolve(self.time_column.is_some(), &fields, &time_value)?;
        Ok(Record { time, fields })
    }
}

/// Reads an event time from a field value; returns milliseconds since the Unix epoch.
///
/// - `Auto`: strings in RFC 3339 form, numbers (or numeric strings) as epoch milliseconds,
///   except a magnitude below 1e11 is seconds and above 1e14 is microseconds.
/// - `Rfc3339`: strings only. Besides `YYYY-MM-DDTHH:MM:SS(.fff…)(Z|±HH:MM)` (fast path), the
///   forms `±HHMM` offsets and no offset at all (taken as UTC) are accepted.
/// - `EpochMillis` / `EpochMicros` / `EpochSeconds`: numbers or numeric strings; seconds may be
///   fractional.
///
/// Negative epoch numbers, non-finite numbers and times outside years 1–9999 are errors.
/// Fractional milliseconds are truncated toward negative infinity; fractional seconds are
/// rounded to the nearest millisecond (so `1.001` s is exactly 1001 ms).
pub fn parse_time(value: &Value, format: TimeFormat) -> Result<Timestamp, DecodeError> {
    match value {
        Value::Int(i) => match format {
            TimeFormat::Rfc3339 => Err(DecodeError(format!(
                "expected an RFC 3339 string, found the number {i}"
            ))),
            _ => epoch_int(*i, format),
        },
        Value::Float(f) => match format {
            TimeFormat::Rfc3339 => Err(DecodeError(format!(
                "expected an RFC 3339 string, found the number {f}"
            ))),
            _ => epoch_float(*f, format),
        },
        Value::Str(s) => parse_time_str(s, format),
        Value::Null => Err(DecodeError("event time is null".into())),
        Value::Bool(b) => Err(DecodeError(format!(
            "expected a timestamp, found the boolean {b}"
        ))),
    }
}

fn parse_time_str(s: &str, format: TimeFormat) -> Result<Timestamp, DecodeError> {
    let b = s.as_bytes();
    if b.is_empty() {
        return Err(DecodeError("empty timestamp string".into()));
    }
    let looks_like_date = b.len() >= 10 && b.get(4) == Some(&b'-');
    match format {
        TimeFormat::Rfc3339 => parse_rfc3339(s),
        TimeFormat::Auto if looks_like_date => parse_rfc3339(s),
        _ => {
            if let Ok(i) = s.parse::<i64>() {
                return epoch_int(i, format);
            }
            let numeric = b
                .iter()
                .all(|c| matches!(c, b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-'));
            if numeric {
                if let Ok(f) = s.parse::<f64>() {
                    return epoch_float(f, format);
                }
            }
            if format == TimeFormat::Auto {
                Err(DecodeError(format!(
                    "{} is neither an RFC 3339 timestamp nor an epoch number",
                    quoted(s)
                )))
            } else {
                Err(DecodeError(format!("{} is not an epoch number", quoted(s))))
            }
        }
    }
}

/// `s` in quotes, shortened for messages.
fn quoted(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return format!("\"{s}\"");
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("\"{}…\" ({} bytes)", s.get(..end).unwrap_or(""), s.len())
}

fn check_range(ms: i64) -> Result<Timestamp, DecodeError> {
    if (MIN_EVENT_TIME..=MAX_EVENT_TIME).contains(&ms) {
        Ok(ms)
    } else {
        Err(DecodeError(format!(
            "timestamp {ms} ms is outside years 1-9999"
        )))
    }
}

fn out_of_range(what: impl std::fmt::Display) -> DecodeError {
    DecodeError(format!("epoch timestamp {what} is outside years 1-9999"))
}

/// The integers [`TimeFormat::Auto`] reads as milliseconds (see [`epoch_unit`]).
const AUTO_MILLIS_FROM: i64 = 100_000_000_000;
const AUTO_MILLIS_TO: i64 = 100_000_000_000_000;

/// The unit of an epoch number: `format` itself, or with `Auto`, by magnitude (below 1e11 is
/// seconds, above 1e14 is microseconds, else milliseconds).
fn epoch_unit(magnitude: f64, format: TimeFormat) -> TimeFormat {
    match format {
        TimeFormat::Auto if magnitude < AUTO_MILLIS_FROM as f64 => TimeFormat::EpochSeconds,
        TimeFormat::Auto if magnitude > AUTO_MILLIS_TO as f64 => TimeFormat::EpochMicros,
        TimeFormat::Auto => TimeFormat::EpochMillis,
        f => f,
    }
}

fn epoch_int(i: i64, format: TimeFormat) -> Result<Timestamp, DecodeError> {
    if i < 0 {
        return Err(DecodeError(format!("negative epoch timestamp {i}")));
    }
    let ms = match epoch_unit(i as f64, format) {
        TimeFormat::EpochSeconds => i.checked_mul(1000).ok_or_else(|| out_of_range(i))?,
        TimeFormat::EpochMicros => i / 1000,
        _ => i,
    };
    check_range(ms).map_err(|_| out_of_range(i))
}

fn epoch_float(f: f64, format: TimeFormat) -> Result<Timestamp, DecodeError> {
    if !f.is_finite() {
        return Err(DecodeError(format!("epoch timestamp {f} is not finite")));
    }
    if f < 0.0 {
        return Err(DecodeError(format!("negative epoch timestamp {f}")));
    }
    let ms = match epoch_unit(f, format) {
        TimeFormat::EpochSeconds => (f * 1000.0).round(),
        TimeFormat::EpochMicros => (f / 1000.0).floor(),
        _ => f.floor(),
    };
    if ms < MIN_EVENT_TIME as f64 || ms > MAX_EVENT_TIME as f64 {
        return Err(out_of_range(f));
    }
    Ok(ms as Timestamp)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ => {
            if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 {
                29
            } else {
                28
            }
        }
    }
}

fn num2(b: &[u8], at: usize) -> Option<u32> {
    let d1 = b.get(at)?.wrapping_sub(b'0');
    let d2 = b.get(at + 1)?.wrapping_sub(b'0');
    if d1 < 10 && d2 < 10 {
        Some(u32::from(d1) * 10 + u32::from(d2))
    } else {
        None
    }
}

/// The common `YYYY-MM-DDTHH:MM:SS(.f+)?(Z|±HH:MM)` shape; `None` when `b` is not exactly that
/// (including invalid dates), leaving the decision to the general parser.
fn fast_rfc3339(b: &[u8]) -> Option<i64> {
    let year = i64::from(num2(b, 0)? * 100 + num2(b, 2)?);
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    let month = num2(b, 5)?;
    let day = num2(b, 8)?;
    if !matches!(b.get(10), Some(b'T' | b't' | b' ')) {
        return None;
    }
    let hour = num2(b, 11)?;
    let minute = num2(b, 14)?;
    let second = num2(b, 17)?;
    if b.get(13) != Some(&b':') || b.get(16) != Some(&b':') {
        return None;
    }
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut millis = 0u32;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while let Some(c @ b'0'..=b'9') = b.get(i) {
            if i - start < 3 {
                millis = millis * 10 + u32::from(c - b'0');
            }
            i += 1;
        }
        let n = i - start;
        if n == 0 || n > 9 {
            return None;
        }
        for _ in n..3 {
            millis *= 10;
        }
    }
    let offset_min: i64 = match b.get(i) {
        Some(b'Z' | b'z') => {
            i += 1;
            0
        }
        Some(&sign @ (b'+' | b'-')) => {
            let oh = num2(b, i + 1)?;
            let om = num2(b, i + 4)?;
            if b.get(i + 3) != Some(&b':') || oh > 23 || om > 59 {
                return None;
            }
            i += 6;
            let m = i64::from(oh * 60 + om);
            if sign == b'-' {
                -m
            } else {
                m
            }
        }
        _ => return None,
    };
    if i != b.len() {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset_min * 60;
    Some(secs * 1000 + i64::from(millis))
}

fn parse_rfc3339(s: &str) -> Result<Timestamp, DecodeError> {
    if let Some(ms) = fast_rfc3339(s.as_bytes()) {
        return check_range(ms);
    }
    let parsed = chrono::DateTime::parse_from_rfc3339(s)
        .map(|d| d.timestamp_millis())
        .or_else(|_| {
            chrono::DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z")
                .map(|d| d.timestamp_millis())
        })
        .or_else(|_| {
            chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
                .map(|d| d.and_utc().timestamp_millis())
        });
    match parsed {
        Ok(ms) => check_range(ms),
        Err(e) => Err(DecodeError(format!(
            "{} is not an RFC 3339 timestamp ({e})",
            quoted(s)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::event::FieldSlots;
    use crate::topology::EventTimeSpec;

    #[test]
    fn a_key_head_read_in_place_equals_the_copied_head() {
        let input = br#"{"k":1,"user_id":"u","a_much_longer_key":2}"#;
        for start in 0..input.len() {
            for end in start..=input.len() {
                assert_eq!(
                    head8_in(input, start, end),
                    head8(&input[start..end]),
                    "bytes {start}..{end}"
                );
            }
        }
    }

    fn ctx(fields: &[&str], time_field: &str, format: TimeFormat) -> DecodeContext {
        let mut slots = FieldSlots::default();
        for f in fields {
            slots.slot(f);
        }
        DecodeContext {
            source_name: "src".into(),
            slots: Arc::new(slots),
            event_time: EventTimeSpec {
                field: time_field.into(),
                format,
                processing_time: false,
                source_timestamp: false,
            },
        }
    }

    fn bench_ctx() -> DecodeContext {
        ctx(&["key", "value"], "ts_ms", TimeFormat::Auto)
    }

    fn s(v: &str) -> Value {
        Value::Str(v.into())
    }

    fn json(fields: &[&str], line: &str) -> Result<Record, DecodeError> {
        JsonDecoder::new(&ctx(fields, "t", TimeFormat::Auto)).decode(line.as_bytes())
    }

    fn json_value(line_value: &str) -> Result<Value, DecodeError> {
        let line = format!(r#"{{"t":1700000000000,"v":{line_value}}}"#);
        json(&["v"], &line).map(|r| r.fields[0].clone())
    }

    fn err_text(r: Result<impl std::fmt::Debug, DecodeError>) -> String {
        match r {
            Ok(v) => panic!("expected an error, got {v:?}"),
            Err(e) => e.0,
        }
    }

    #[test]
    fn json_benchmark_shape() {
        let mut d = JsonDecoder::new(&bench_ctx());
        let r = d
            .decode(br#"{"ts_ms":1700000000123,"key":"key_4242","value":17.5}"#)
            .unwrap();
        assert_eq!(r.time, 1_700_000_000_123);
        assert_eq!(r.fields.as_slice(), &[s("key_4242"), Value::Float(17.5)]);
    }

    #[test]
    fn json_time_field_also_a_slot() {
        let mut d = JsonDecoder::new(&ctx(&["ts_ms", "key"], "ts_ms", TimeFormat::Auto));
        let r = d.decode(br#"{"key":"a","ts_ms":1700000000123}"#).unwrap();
        assert_eq!(r.time, 1_700_000_000_123);
        assert_eq!(
            r.fields.as_slice(),
            &[Value::Int(1_700_000_000_123), s("a")]
        );
    }

    #[test]
    fn json_missing_fields_are_null_and_extra_fields_skipped() {
        let r = json(
            &["a", "b", "c"],
            r#"{"x":{"deep":[1,2,{"y":"z\"}"}]},"b":true,"t":1700000000000,"y":[],"z":{}}"#,
        )
        .unwrap();
        assert_eq!(
            r.fields.as_slice(),
            &[Value::Null, Value::Bool(true), Value::Null]
        );
    }

    #[test]
    fn json_missing_time_field() {
        let mut d = JsonDecoder::new(&bench_ctx());
        assert_eq!(
            err_text(d.decode(br#"{"key":"a","value":1}"#)),
            "missing event time field `ts_ms`"
        );
    }

    #[test]
    fn json_null_or_bad_time() {
        let mut d = JsonDecoder::new(&bench_ctx());
        let e = err_text(d.decode(br#"{"ts_ms":null}"#));
        assert!(e.contains("`ts_ms`") && e.contains("null"), "{e}");
        let e = err_text(d.decode(br#"{"ts_ms":"yesterday"}"#));
        assert!(e.contains("yesterday"), "{e}");
        let e = err_text(d.decode(br#"{"ts_ms":true}"#));
        assert!(e.contains("boolean"), "{e}");
    }

    #[test]
    fn json_processing_time() {
        let mut c = bench_ctx();
        c.event_time.processing_time = true;
        let mut d = JsonDecoder::new(&c);
        let before = wall_clock_ms();
        let r = d.decode(br#"{"key":"a"}"#).unwrap();
        assert!(r.time >= before && r.time <= wall_clock_ms());
        assert_eq!(r.fields[0], s("a"));
    }

    #[test]
    fn json_duplicate_keys_last_wins() {
        let r = json(
            &["a"],
            r#"{"a":1,"t":1700000000000,"a":"two","t":1700000000001}"#,
        )
        .unwrap();
        assert_eq!(r.fields[0], s("two"));
        assert_eq!(r.time, 1_700_000_000_001);
    }

    #[test]
    fn json_whitespace() {
        let r = json(
            &["a"],
            " \t{ \"a\" :\r\n 1 , \"t\" : 1700000000000 ,\"n\": [ 1 , { } , [ ] ] } \n",
        )
        .unwrap();
        assert_eq!(r.fields[0], Value::Int(1));
        let r = json(&[], r#"{"t":1700000000000}"#).unwrap();
        assert!(r.fields.is_empty());
    }

    #[test]
    fn json_string_escapes() {
        assert_eq!(json_value(r#""a\"b\\c\/d""#).unwrap(), s("a\"b\\c/d"));
        assert_eq!(
            json_value(r#""\b\f\n\r\t""#).unwrap(),
            s("\u{8}\u{c}\n\r\t")
        );
        assert_eq!(json_value(r#""\u00e9\u4e2d""#).unwrap(), s("é中"));
        assert_eq!(json_value(r#""\uD83D\uDE00!""#).unwrap(), s("😀!"));
        assert_eq!(
            json_value(r#""héllo 中文 😀""#).unwrap(),
            s("héllo 中文 😀")
        );
        assert_eq!(json_value(r#""""#).unwrap(), s(""));
        let long = "x".repeat(100);
        assert_eq!(json_value(&format!("\"{long}\"")).unwrap(), s(&long));
    }

    #[test]
    fn json_strings_of_every_length() {
        for n in 0..40 {
            let body = "é".repeat(n / 2) + &"x".repeat(n);
            assert_eq!(json_value(&format!("\"{body}\"")).unwrap(), s(&body));
            assert_eq!(
                json_value(&format!("\"{body}\\n{body}\"")).unwrap(),
                s(&format!("{body}\n{body}"))
            );
            let e = err_text(json_value(&format!("\"{body}\u{1f}\"")));
            assert!(e.contains("control character"), "{n}: {e}");
            let e = err_text(json_value(&format!("\"{body}")));
            assert!(
                e.contains("expected ',' or '}'") || e.contains("unterminated"),
                "{e}"
            );
        }
    }

    #[test]
    fn json_keys_sharing_a_prefix() {
        let r = json(
            &["abcdefgh", "abcdefghi", "abcdefghij", "abcdefgx"],
            r#"{"abcdefghij":3,"abcdefgh":1,"abcdefghi":2,"abcdefghk":9,"abcdefg":9,"t":1700000000000}"#,
        )
        .unwrap();
        assert_eq!(
            r.fields.as_slice(),
            &[Value::Int(1), Value::Int(2), Value::Int(3), Value::Null]
        );
    }

    #[test]
    fn json_escaped_keys_match() {
        let r = json(
            &["ké", "a\"b"],
            r#"{"k\u00e9":1,"a\"b":2,"\u0074":1700000000000}"#,
        )
        .unwrap();
        assert_eq!(r.fields.as_slice(), &[Value::Int(1), Value::Int(2)]);
        assert_eq!(r.time, 1_700_000_000_000);
    }

    #[test]
    fn json_bad_strings() {
        for v in [
            r#""\x""#,
            r#""\u12""#,
            r#""\u12G4""#,
            r#""\uD83D""#,
            r#""\uD83Dx""#,
            r#""\uD83D\u0041""#,
            r#""\uDE00""#,
            "\"a\tb\"",
            "\"a\u{1}b\"",
            r#""abc"#,
            r#""abc\"#,
        ] {
            let e = err_text(json_value(v));
            assert!(e.starts_with("invalid JSON at byte"), "{v}: {e}");
        }
        let e = err_text(json(&[], "{\"t\":\"\u{1}\"}"));
        assert!(e.contains("control character"), "{e}");
        let e = err_text(JsonDecoder::new(&bench_ctx()).decode(b"{\"key\":\"\xff\"}"));
        assert_eq!(
            e,
            "invalid JSON at byte 8: invalid UTF-8 in string (found byte 0xff)"
        );
        for bad in [
            &b"{\"t\":1700000000000,\"x\":\"\xc3\"}"[..],
            b"{\"t\":1700000000000,\"x\":\"\xed\xa0\x80\"}",
            b"{\"t\":1700000000000,\"x\":\"\xc0\xaf\"}",
            b"{\"t\":1700000000000,\"x\":\"\xf5\x80\x80\x80\"}",
            b"{\"t\":1700000000000,\"\xe4\xb8\":1}",
        ] {
            let e = err_text(JsonDecoder::new(&ctx(&["a"], "t", TimeFormat::Auto)).decode(bad));
            assert!(e.contains("invalid UTF-8 in string"), "{e}");
        }
        let e = err_text(json(&[], "{\"t\":1700000000000} \u{e9}"));
        assert!(
            e.contains("unexpected characters after the object (found byte 0xc3)"),
            "{e}"
        );
    }

    #[test]
    fn json_numbers() {
        assert_eq!(json_value("0").unwrap(), Value::Int(0));
        assert_eq!(json_value("-0").unwrap(), Value::Int(0));
        assert_eq!(json_value("-0.0").unwrap(), Value::Float(-0.0));
        assert_eq!(json_value("42").unwrap(), Value::Int(42));
        assert_eq!(json_value("-17").unwrap(), Value::Int(-17));
        assert_eq!(json_value("17.5").unwrap(), Value::Float(17.5));
        assert_eq!(json_value("1e3").unwrap(), Value::Float(1000.0));
        assert_eq!(json_value("1E+3").unwrap(), Value::Float(1000.0));
        assert_eq!(json_value("2.5e-3").unwrap(), Value::Float(0.0025));
        assert_eq!(
            json_value("9223372036854775807").unwrap(),
            Value::Int(i64::MAX)
        );
        assert_eq!(
            json_value("-9223372036854775808").unwrap(),
            Value::Int(i64::MIN)
        );
        assert_eq!(
            json_value("9223372036854775808").unwrap(),
            Value::Float(9_223_372_036_854_775_808.0)
        );
        assert_eq!(
            json_value("123456789012345678901234567890").unwrap(),
            Value::Float(1.2345678901234568e29)
        );
        assert_eq!(
            json_value("-9223372036854775809").unwrap(),
            Value::Float(-9_223_372_036_854_775_809.0)
        );
        for bad in [
            "01", "-", "1.", ".5", "1e", "1e+", "+1", "--1", "1.e3", "0x10", "1e999", "NaN",
            "Infinity",
        ] {
            let e = err_text(json_value(bad));
            assert!(e.starts_with("invalid JSON at byte"), "{bad}: {e}");
        }
        assert!(err_text(json_value("1e999")).contains("out of range"));
    }

    #[test]
    fn json_literals() {
        assert_eq!(json_value("true").unwrap(), Value::Bool(true));
        assert_eq!(json_value("false").unwrap(), Value::Bool(false));
        assert_eq!(json_value("null").unwrap(), Value::Null);
        for bad in ["tru", "nul", "falsey", "True", "nan"] {
            assert!(json_value(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn json_nested_wanted_values_are_raw_text() {
        assert_eq!(
            json_value(r#"{"a": [1, "x"], "b": {}}"#).unwrap(),
            s(r#"{"a": [1, "x"], "b": {}}"#)
        );
        assert_eq!(json_value("[]").unwrap(), s("[]"));
    }

    #[test]
    fn json_structure_errors() {
        let cases = [
            ("", "expected a JSON object"),
            ("   ", "expected a JSON object"),
            ("[1]", "expected a JSON object"),
            ("\"s\"", "expected a JSON object"),
            ("{", "expected a string key"),
            ("{\"t\"", "expected ':'"),
            ("{\"t\":", "expected a value"),
            ("{\"t\":1700000000000", "expected ',' or '}'"),
            ("{\"t\":1700000000000,}", "expected a string key"),
            ("{\"t\":1700000000000 \"a\":1}", "expected ',' or '}'"),
            ("{t:1}", "expected a string key"),
            (
                "{\"t\":1700000000000} x",
                "unexpected characters after the object",
            ),
            (
                "{\"t\":1700000000000}{}",
                "unexpected characters after the object",
            ),
            ("{\"t\":1700000000000,\"x\":[1,]}", "expected a value"),
            ("{\"t\":1700000000000,\"x\":[1}", "expected ',' or ']'"),
            ("{\"t\":1700000000000,\"x\":{\"a\"}}", "expected ':'"),
            (
                "{\"t\":1700000000000,\"x\":{\"a\":1]}",
                "expected ',' or '}' in object",
            ),
            ("{\"t\":1700000000000,\"x\":{1:1}}", "expected a string key"),
            ("{\"t\":1700000000000,\"x\":[1 2]}", "expected ',' or ']'"),
            ("{\"t\":1700000000000,\"x\":\"\\q\"}", "invalid escape"),
        ];
        for (line, want) in cases {
            let e = err_text(json(&["a"], line));
            assert!(e.contains(want), "{line:?}: {e}");
            assert!(e.starts_with("invalid JSON at byte"), "{line:?}: {e}");
        }
        let e = err_text(json(&["a"], "{\"t\":1700000000000} x"));
        assert_eq!(
            e,
            "invalid JSON at byte 20: unexpected characters after the object (found 'x')"
        );
    }

    #[test]
    fn json_deep_nesting() {
        let ok = format!(
            "{{\"t\":1700000000000,\"x\":{}1{}}}",
            "[".repeat(128),
            "]".repeat(128)
        );
        assert!(json(&[], &ok).is_ok());
        let deep = format!(
            "{{\"t\":1700000000000,\"x\":{}1{}}}",
            "[".repeat(129),
            "]".repeat(129)
        );
        assert!(err_text(json(&[], &deep)).contains("nesting too deep"));
        let very = format!("{{\"x\":{}", "[{\"a\":".repeat(100_000));
        assert!(json(&[], &very).is_err());
    }

    fn csv_ctx() -> DecodeContext {
        ctx(&["key", "value", "flag"], "ts", TimeFormat::Auto)
    }

    #[test]
    fn csv_basic_and_inference() {
        let mut d =
            CsvDecoder::new(&csv_ctx(), b"\xEF\xBB\xBFts, key ,value,flag,other\r").unwrap();
        assert_eq!(d.columns(), 5);
        let r = d.decode(b"1700000000123,key_1,17.5,true,x\r").unwrap();
        assert_eq!(r.time, 1_700_000_000_123);
        assert_eq!(
            r.fields.as_slice(),
            &[s("key_1"), Value::Float(17.5), Value::Bool(true)]
        );
        let r = d.decode(b"2026-11-25T10:00:00Z,,-3,false,").unwrap();
        assert_eq!(r.time, 1_795_600_800_000);
        assert_eq!(
            r.fields.as_slice(),
            &[Value::Null, Value::Int(-3), Value::Bool(false)]
        );
        let r = d.decode(b"1700000000,\"\",1e3,TRUE,y").unwrap();
        assert_eq!(r.time, 1_700_000_000_000);
        assert_eq!(
            r.fields.as_slice(),
            &[s(""), Value::Float(1000.0), s("TRUE")]
        );
        let r = d
            .decode(b"1700000000000,\"a,\"\"b\"\"\",99999999999999999999,inf,z")
            .unwrap();
        assert_eq!(
            r.fields.as_slice(),
            &[s("a,\"b\""), Value::Float(1e20), s("inf")]
        );
        let r = d.decode(b"1700000000000,\"42\",+7,1.2.3,z").unwrap();
        assert_eq!(
            r.fields.as_slice(),
            &[Value::Int(42), Value::Int(7), s("1.2.3")]
        );
        let r = d.decode(b"1700000000000,a\"b,-,NaN,z").unwrap();
        assert_eq!(r.fields.as_slice(), &[s("a\"b"), s("-"), s("NaN")]);
    }

    #[test]
    fn csv_time_column_also_slot_and_missing_slot_column() {
        let c = ctx(&["ts", "nope"], "ts", TimeFormat::EpochSeconds);
        let mut d = CsvDecoder::new(&c, b"ts,a").unwrap();
        let r = d.decode(b"1700000000.5,x").unwrap();
        assert_eq!(r.time, 1_700_000_000_500);
        assert_eq!(
            r.fields.as_slice(),
            &[Value::Float(1_700_000_000.5), Value::Null]
        );
    }

    #[test]
    fn csv_errors() {
        let e = err_text(CsvDecoder::new(&csv_ctx(), b"key,value"));
        assert!(e.contains("no event time column `ts`"), "{e}");
        let e = err_text(CsvDecoder::new(&csv_ctx(), b"ts,\"key"));
        assert!(e.starts_with("CSV header: invalid CSV"), "{e}");
        let mut d = CsvDecoder::new(&csv_ctx(), b"ts,key,value").unwrap();
        let e = err_text(d.decode(b"1700000000000,a"));
        assert_eq!(e, "CSV row has 2 fields, the header has 3");
        let e = err_text(d.decode(b"1700000000000,a,1,2"));
        assert_eq!(e, "CSV row has 4 fields, the header has 3");
        let e = err_text(d.decode(b"1700000000000,\"a,1"));
        assert!(e.contains("unterminated quoted field in column 2"), "{e}");
        let e = err_text(d.decode(b"1700000000000,\"a\"x,1"));
        assert!(e.contains("after the closing quote of column 2"), "{e}");
        let e = err_text(d.decode(b",a,1"));
        assert!(e.contains("`ts`") && e.contains("null"), "{e}");
        let e = err_text(d.decode(b"yesterday,a,1"));
        assert!(e.contains("yesterday"), "{e}");
        let e = err_text(d.decode(b"1700000000000,\xff,1"));
        assert!(e.contains("invalid UTF-8 at byte 14"), "{e}");
        // Unused columns are not validated.
        assert!(CsvDecoder::new(&csv_ctx(), b"ts,key,junk")
            .unwrap()
            .decode(b"1700000000000,a,\xff")
            .is_ok());
    }

    #[test]
    fn csv_processing_time_needs_no_time_column() {
        let mut c = csv_ctx();
        c.event_time.processing_time = true;
        let mut d = CsvDecoder::new(&c, b"key").unwrap();
        let r = d.decode(b"k").unwrap();
        assert!(r.time > 0);
        assert_eq!(r.fields[0], s("k"));
    }

    fn t(v: Value, f: TimeFormat) -> Result<Timestamp, DecodeError> {
        parse_time(&v, f)
    }

    #[test]
    fn time_rfc3339() {
        let a = TimeFormat::Auto;
        assert_eq!(t(s("2026-11-25T10:00:00Z"), a).unwrap(), 1_795_600_800_000);
        assert_eq!(
            t(s("2026-11-25T10:00:00.123Z"), a).unwrap(),
            1_795_600_800_123
        );
        assert_eq!(
            t(s("2026-11-25T10:00:00.1Z"), a).unwrap(),
            1_795_600_800_100
        );
        assert_eq!(
            t(s("2026-11-25T10:00:00.123456789Z"), a).unwrap(),
            1_795_600_800_123
        );
        assert_eq!(t(s("2026-11-25t10:00:00z"), a).unwrap(), 1_795_600_800_000);
        assert_eq!(t(s("2026-11-25 10:00:00Z"), a).unwrap(), 1_795_600_800_000);
        assert_eq!(
            t(s("2026-11-25T12:00:00+02:00"), a).unwrap(),
            1_795_600_800_000
        );
        assert_eq!(
            t(s("2026-11-25T05:30:00-04:30"), a).unwrap(),
            1_795_600_800_000
        );
        assert_eq!(t(s("1970-01-01T00:00:00Z"), a).unwrap(), 0);
        assert_eq!(t(s("1969-12-31T23:59:59.999Z"), a).unwrap(), -1);
        assert_eq!(t(s("2024-02-29T00:00:00Z"), a).unwrap(), 1_709_164_800_000);
        assert_eq!(t(s("2000-03-01T00:00:00Z"), a).unwrap(), 951_868_800_000);
        // Fallbacks through chrono.
        assert_eq!(
            t(s("2026-11-25T12:00:00+0200"), a).unwrap(),
            1_795_600_800_000
        );
        assert_eq!(t(s("2026-11-25T10:00:00"), a).unwrap(), 1_795_600_800_000);
        assert_eq!(
            t(s("2026-11-25T10:00:00.5"), TimeFormat::Rfc3339).unwrap(),
            1_795_600_800_500
        );
        // Agreement with chrono on the fast path.
        for text in [
            "1999-12-31T23:59:59.999+13:45",
            "2100-02-28T01:02:03-11:00",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999Z",
            "2016-12-31T23:59:60Z",
        ] {
            assert_eq!(
                fast_rfc3339(text.as_bytes()),
                chrono::DateTime::parse_from_rfc3339(text)
                    .ok()
                    .map(|d| d.timestamp_millis()),
                "{text}"
            );
        }
    }

    #[test]
    fn time_rfc3339_errors() {
        for bad in [
            "yesterday",
            "",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2026-01-01T24:00:00Z",
            "2026-01-01T00:60:00Z",
            "2026-01-01T00:00:00+25:00",
            "2026-01-01T00:00:00Zjunk",
            "2026-01-01",
            "+10000-01-01T00:00:00Z",
            "2026-01-01T00:00:00.Z",
        ] {
            for f in [TimeFormat::Auto, TimeFormat::Rfc3339] {
                assert!(t(s(bad), f).is_err(), "{bad:?} {f:?}");
            }
        }
        assert_eq!(
            err_text(t(s(""), TimeFormat::Auto)),
            "empty timestamp string"
        );
        let e = err_text(t(s("yesterday"), TimeFormat::Auto));
        assert_eq!(
            e,
            "\"yesterday\" is neither an RFC 3339 timestamp nor an epoch number"
        );
        let e = err_text(t(s("2026-13-01T00:00:00Z"), TimeFormat::Auto));
        assert!(
            e.starts_with("\"2026-13-01T00:00:00Z\" is not an RFC 3339 timestamp"),
            "{e}"
        );
        let e = err_text(t(Value::Int(5), TimeFormat::Rfc3339));
        assert!(e.contains("expected an RFC 3339 string"), "{e}");
        let e = err_text(t(s(&"9".repeat(1000)), TimeFormat::Rfc3339));
        assert!(e.len() < 200, "{e}");
    }

    #[test]
    fn time_epoch_auto() {
        let a = TimeFormat::Auto;
        assert_eq!(t(Value::Int(1_700_000_000), a).unwrap(), 1_700_000_000_000);
        assert_eq!(
            t(Value::Int(1_700_000_000_123), a).unwrap(),
            1_700_000_000_123
        );
        assert_eq!(
            t(Value::Int(1_700_000_000_123_456), a).unwrap(),
            1_700_000_000_123
        );
        assert_eq!(t(Value::Int(0), a).unwrap(), 0);
        assert_eq!(
            t(Value::Float(1_700_000_000.123), a).unwrap(),
            1_700_000_000_123
        );
        assert_eq!(
            t(Value::Float(1_700_000_000_123.9), a).unwrap(),
            1_700_000_000_123
        );
        assert_eq!(t(s("1700000000123"), a).unwrap(), 1_700_000_000_123);
        assert_eq!(t(s("1700000000.5"), a).unwrap(), 1_700_000_000_500);
    }

    #[test]
    fn time_epoch_explicit() {
        assert_eq!(t(Value::Int(5), TimeFormat::EpochMillis).unwrap(), 5);
        assert_eq!(t(Value::Int(5_999), TimeFormat::EpochMicros).unwrap(), 5);
        assert_eq!(t(Value::Int(5), TimeFormat::EpochSeconds).unwrap(), 5_000);
        assert_eq!(
            t(Value::Float(1.001), TimeFormat::EpochSeconds).unwrap(),
            1_001
        );
        assert_eq!(t(Value::Float(5.9), TimeFormat::EpochMillis).unwrap(), 5);
        assert_eq!(
            t(s("1700000000123"), TimeFormat::EpochMillis).unwrap(),
            1_700_000_000_123
        );
        assert_eq!(
            err_text(t(s("2026-01-01T00:00:00Z"), TimeFormat::EpochMillis)),
            "\"2026-01-01T00:00:00Z\" is not an epoch number"
        );
    }

    #[test]
    fn time_epoch_errors() {
        let a = TimeFormat::Auto;
        assert_eq!(
            err_text(t(Value::Int(-5), a)),
            "negative epoch timestamp -5"
        );
        assert!(err_text(t(Value::Float(-0.5), a)).contains("negative"));
        assert!(err_text(t(Value::Float(f64::NAN), a)).contains("not finite"));
        assert!(err_text(t(Value::Float(f64::INFINITY), a)).contains("not finite"));
        assert!(err_text(t(s("NaN"), a)).contains("neither"));
        assert!(err_text(t(s("-abc"), a)).contains("neither"));
        assert!(err_text(t(Value::Int(i64::MAX), TimeFormat::EpochSeconds)).contains("outside"));
        assert!(err_text(t(Value::Int(i64::MAX), TimeFormat::EpochMillis)).contains("outside"));
        assert!(err_text(t(Value::Int(i64::MAX), a)).contains("outside"));
        assert!(err_text(t(Value::Float(1e300), a)).contains("outside"));
        assert!(err_text(t(Value::Null, a)).contains("null"));
        assert!(err_text(t(Value::Bool(false), a)).contains("boolean"));
    }

    #[test]
    fn days_from_civil_matches_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        assert_eq!(days_from_civil(1, 1, 1), -719_162);
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::*;

        const VALID: &[&str] = &[
            r#"{"ts_ms":1700000000123,"key":"key_4242","value":17.5}"#,
            r#"{"key":"k\u00e9\"","value":[1,{"a":null}],"ts_ms":"2026-11-25T10:00:00.5+01:00","x":{"y":[true,false]}}"#,
        ];

        /// `line` with `edits` applied in order: `(position, byte, 0)` inserts the byte,
        /// `(position, _, 1)` removes a byte, `(position, byte, 2)` replaces one; positions
        /// wrap around the line's length.
        fn edited(line: &str, edits: &[(usize, u8, u8)]) -> Vec<u8> {
            let mut line = line.as_bytes().to_vec();
            for &(at, byte, op) in edits {
                let at = at % (line.len() + 1);
                match op {
                    0 => line.insert(at, byte),
                    1 if at < line.len() => {
                        line.remove(at);
                    }
                    _ if at < line.len() => line[at] = byte,
                    _ => {}
                }
            }
            line
        }

        /// Lines whose keys share positions and prefixes, with and without escapes and
        /// whitespace, for a decoder that remembers the keys of the line before.
        const STREAM: &[&str] = &[
            r#"{"ts_ms":1700000000123,"key":"key_4242","value":17.5}"#,
            r#"{"ts_ms":1700000000124,"key":"key_7","value":-2}"#,
            r#"{"value":3,"ts_ms":1700000000125,"key":"key_1"}"#,
            r#"{"ts_m\u0073":1700000000126,"ke\u0079":"k","value":1}"#,
            r#"{"ts_ms" :1700000000127, "key" : "key_2","value":4}"#,
            r#"{"ts_msx":1,"ts_ms":1700000000128,"key":"key_3","valu":9,"value":5}"#,
            r#"{"key":"key_4","value":6}"#,
            r#"{"ts_ms":1700000000129,"key":"key_5","value":7,"key":"last"}"#,
        ];

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
                let _ = JsonDecoder::new(&bench_ctx()).decode(&bytes);
                let c = csv_ctx();
                if let Ok(mut d) = CsvDecoder::new(&c, &bytes) {
                    let _ = d.decode(&bytes);
                }
                if let Ok(mut d) = CsvDecoder::new(&c, b"ts,key,value") {
                    let _ = d.decode(&bytes);
                }
            }

            /// A string value is taken exactly when its bytes are valid UTF-8 with no quote,
            /// backslash or control character, and then equals them: the scan that validates
            /// it is the only check its text gets (`Parser::plain_text`).
            #[test]
            fn a_plain_string_value_is_taken_exactly_when_it_is_valid_utf8(
                body in proptest::collection::vec(
                    proptest::sample::select(vec![
                        b'a', b' ', b'~', 0x1f, 0x7f, 0xc3, 0xa9, 0xe4, 0xb8, 0xad, 0xf0, 0x9f,
                        0x98, 0x80, 0xed, 0xa0, 0xc0, 0xaf, 0xf5, 0xff,
                    ]),
                    0..24,
                ),
            ) {
                let mut line = b"{\"key\":\"".to_vec();
                line.extend_from_slice(&body);
                line.extend_from_slice(b"\",\"ts_ms\":1700000000000}");
                let decoded = JsonDecoder::new(&bench_ctx()).decode(&line);
                let plain = body.iter().all(|&b| b >= 0x20);
                match std::str::from_utf8(&body) {
                    Ok(text) if plain => {
                        let record = decoded.map_err(|e| TestCaseError::fail(e.0))?;
                        prop_assert_eq!(record.fields.first(), Some(&s(text)));
                    }
                    _ => prop_assert!(decoded.is_err(), "{:?} was taken", body),
                }
            }

            /// One decoder over a stream of lines decodes each exactly as a fresh decoder
            /// does: a remembered key is taken only where the line repeats its very bytes.
            #[test]
            fn a_reused_decoder_decodes_each_line_as_a_fresh_one(
                lines in proptest::collection::vec(
                    (
                        0..STREAM.len(),
                        proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 0..3),
                    ),
                    1..12,
                ),
            ) {
                let ctx = bench_ctx();
                let mut reused = JsonDecoder::new(&ctx);
                for (which, edits) in lines {
                    let line = edited(STREAM[which], &edits);
                    prop_assert_eq!(reused.decode(&line), JsonDecoder::new(&ctx).decode(&line));
                }
            }

            #[test]
            fn json_alphabet_never_panics(
                chars in proptest::collection::vec(
                    proptest::sample::select(b"{}[]\":,\\ 0123456789-+.eEtrufalsn\"uDd8F".to_vec()),
                    0..120,
                ),
            ) {
                let _ = JsonDecoder::new(&bench_ctx()).decode(&chars);
            }

            #[test]
            fn mutated_valid_lines_never_panic(
                which in 0..VALID.len(),
                edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..6),
            ) {
                let line = edited(VALID[which], &edits);
                let _ = JsonDecoder::new(&bench_ctx()).decode(&line);
                let mut c = bench_ctx();
                c.event_time.format = TimeFormat::Rfc3339;
                let _ = JsonDecoder::new(&c).decode(&line);
            }

            #[test]
            fn numbers_match_std_parse(
                int in "-?(0|[1-9][0-9]{0,22})",
                frac in proptest::option::of("[0-9]{1,20}"),
                exp in proptest::option::of("[eE][+-]?[0-9]{1,3}"),
            ) {
                let mut text = int.clone();
                if let Some(f) = &frac {
                    text.push('.');
                    text.push_str(f);
                }
                if let Some(e) = &exp {
                    text.push_str(e);
                }
                let got = json_value(&text);
                // Followed by the rest of the line, the number's last digits are read from a
                // whole word too.
                let line = format!(r#"{{"v":{text},"t":1700000000000,"pad":"12345678"}}"#);
                let first = json(&["v"], &line).map(|r| r.fields[0].clone());
                prop_assert_eq!(first.as_ref().ok(), got.as_ref().ok(), "{}", text);
                if frac.is_none() && exp.is_none() {
                    if let Ok(i) = text.parse::<i64>() {
                        prop_assert_eq!(got.unwrap(), Value::Int(i));
                        return Ok(());
                    }
                }
                match text.parse::<f64>() {
                    Ok(f) if f.is_finite() => {
                        let got = got.unwrap();
                        prop_assert_eq!(&got, &Value::Float(f), "{}", text);
                        if let Value::Float(g) = got {
                            prop_assert_eq!(g.is_sign_negative(), f.is_sign_negative());
                        }
                    }
                    _ => prop_assert!(got.is_err()),
                }
            }

            #[test]
            fn csv_number_fast_path_agrees_with_text_inference(text in "[-+0-9.eE]{1,24}") {
                let field = CsvField { start: 0, end: text.len(), quoted: false, escaped: false };
                let fast = infer_csv_value(text.as_bytes(), &field).unwrap();
                prop_assert_eq!(fast, infer_csv_text(&text), "{}", text);
            }

            #[test]
            fn time_strings_never_panic(text in ".{0,40}", fmt in 0usize..5) {
                let f = [TimeFormat::Auto, TimeFormat::Rfc3339, TimeFormat::EpochMillis,
                         TimeFormat::EpochMicros, TimeFormat::EpochSeconds][fmt];
                let _ = parse_time(&Value::Str(text.as_str().into()), f);
            }

            #[test]
            fn time_numbers_never_panic(i in any::<i64>(), x in any::<f64>(), fmt in 0usize..5) {
                let f = [TimeFormat::Auto, TimeFormat::Rfc3339, TimeFormat::EpochMillis,
                         TimeFormat::EpochMicros, TimeFormat::EpochSeconds][fmt];
                let _ = parse_time(&Value::Int(i), f);
                let _ = parse_time(&Value::Float(x), f);
            }

            /// The decoder's shortcut for integer milliseconds takes exactly the times
            /// `parse_time` gives, whether the time field is a slot or not.
            #[test]
            fn an_integer_event_time_decodes_as_parse_time_reads_it(
                i in prop_oneof![
                    any::<i64>(),
                    -2i64..2,
                    AUTO_MILLIS_FROM - 2..AUTO_MILLIS_FROM + 2,
                    AUTO_MILLIS_TO - 2..AUTO_MILLIS_TO + 2,
                    MAX_EVENT_TIME - 2..MAX_EVENT_TIME + 2,
                ],
                fmt in 0usize..5,
                slot in any::<bool>(),
            ) {
                let f = [TimeFormat::Auto, TimeFormat::Rfc3339, TimeFormat::EpochMillis,
                         TimeFormat::EpochMicros, TimeFormat::EpochSeconds][fmt];
                let fields: &[&str] = if slot { &["t"] } else { &[] };
                let line = format!(r#"{{"t":{i}}}"#);
                let decoded = JsonDecoder::new(&ctx(fields, "t", f)).decode(line.as_bytes());
                prop_assert_eq!(
                    decoded.map(|r| r.time).ok(),
                    parse_time(&Value::Int(i), f).ok()
                );
            }

            #[test]
            fn fast_rfc3339_agrees_with_chrono(
                y in 1i64..9999, mo in 1u32..13, d in 1u32..29, h in 0u32..24, mi in 0u32..60,
                sec in 0u32..60, ms in 0u32..1000, off in -1439i32..1440,
            ) {
                let sign = if off < 0 { '-' } else { '+' };
                let text = format!(
                    "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{sec:02}.{ms:03}{sign}{:02}:{:02}",
                    off.abs() / 60, off.abs() % 60
                );
                let want = chrono::DateTime::parse_from_rfc3339(&text).unwrap().timestamp_millis();
                prop_assert_eq!(fast_rfc3339(text.as_bytes()), Some(want));
            }
        }
    }
}
