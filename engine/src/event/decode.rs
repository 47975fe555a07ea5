//! Decoding JSON lines and CSV rows into records. INTERFACE STUB — implemented by the decode
//! work package.

use crate::event::{Record, Timestamp, Value};
use crate::runtime::DecodeContext;
use crate::topology::TimeFormat;

/// Why a record could not be decoded; becomes the dead letter's error text.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

/// Decodes one JSON object per call, extracting only the fields in the context's slots.
pub struct JsonDecoder {
    _private: (),
}

impl JsonDecoder {
    /// A decoder for `ctx`.
    pub fn new(_ctx: &DecodeContext) -> Self {
        unimplemented!()
    }
    /// Decodes one JSON object (a line without its newline).
    pub fn decode(&mut self, _bytes: &[u8]) -> Result<Record, DecodeError> {
        unimplemented!()
    }
}

/// Decodes CSV rows given the header row.
pub struct CsvDecoder {
    _private: (),
}

impl CsvDecoder {
    /// A decoder for `ctx` and the file's header row.
    pub fn new(_ctx: &DecodeContext, _header: &[u8]) -> Result<Self, DecodeError> {
        unimplemented!()
    }
    /// Decodes one row (without its newline).
    pub fn decode(&mut self, _row: &[u8]) -> Result<Record, DecodeError> {
        unimplemented!()
    }
}

/// Reads an event time from a field value.
pub fn parse_time(_value: &Value, _format: TimeFormat) -> Result<Timestamp, DecodeError> {
    unimplemented!()
}
