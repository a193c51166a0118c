//! What can be wrong with a pgoutput payload.
//!
//! Every variant that concerns a byte carries its `offset` from the start of
//! the payload (the tag is at offset 0) and the `field` being read, spelled
//! `Message.field` after the protocol documentation.

/// A payload the decoder refused. The decoder's state is unchanged by a
/// refused payload.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Every message starts with a one-byte tag; there was none.
    #[error("empty pgoutput message")]
    Empty,

    /// The first byte is not a pgoutput message tag.
    #[error("unknown pgoutput message tag 0x{tag:02X} at offset 0")]
    UnknownTag { tag: u8 },

    /// The message exists, but not in the protocol version the stream was
    /// started with: the options given to the decoder do not match the server.
    #[error(
        "{message} message needs proto_version {required}, decoder was set up for {proto_version}"
    )]
    RequiresProtocol {
        message: &'static str,
        required: u32,
        proto_version: u32,
    },

    /// A message that cannot appear between Stream Start and Stream Stop
    /// (e.g. Begin, or a nested Stream Start).
    #[error("{message} message inside a stream block")]
    InsideStreamBlock { message: &'static str },

    /// Stream Stop without a Stream Start.
    #[error("{message} message outside a stream block")]
    OutsideStreamBlock { message: &'static str },

    /// The payload ends before a field does.
    #[error("{field} at offset {offset} needs {needed} bytes, {available} left")]
    Truncated {
        field: &'static str,
        offset: usize,
        needed: usize,
        available: usize,
    },

    /// A String field has no terminating NUL before the end of the payload.
    #[error("{field} at offset {offset} has no NUL terminator")]
    UnterminatedString { field: &'static str, offset: usize },

    /// A String field is not UTF-8 (the connection's client_encoding should be UTF8).
    #[error("{field} at offset {offset} is not valid UTF-8")]
    InvalidUtf8 { field: &'static str, offset: usize },

    /// A one-byte code the protocol does not define (replica identity, tuple
    /// column kind, old/new tuple marker).
    #[error("{field} at offset {offset} has undefined value 0x{value:02X}")]
    InvalidByte {
        field: &'static str,
        offset: usize,
        value: u8,
    },

    /// A count announces more items than the remaining bytes could hold,
    /// checked before anything is allocated for them.
    #[error(
        "{field} at offset {offset} announces {count} items of at least {min_item_size} bytes, {available} bytes left"
    )]
    CountTooLarge {
        field: &'static str,
        offset: usize,
        count: u64,
        min_item_size: usize,
        available: usize,
    },

    /// A byte length below zero.
    #[error("{field} at offset {offset} is negative ({length})")]
    NegativeLength {
        field: &'static str,
        offset: usize,
        length: i32,
    },

    /// Bytes left over after a complete message.
    #[error("{count} trailing bytes after {message} message at offset {offset}")]
    TrailingBytes {
        message: &'static str,
        offset: usize,
        count: usize,
    },
}

impl DecodeError {
    /// Byte offset of the problem within the payload, when it concerns one.
    pub fn offset(&self) -> Option<usize> {
        match self {
            DecodeError::Empty
            | DecodeError::RequiresProtocol { .. }
            | DecodeError::InsideStreamBlock { .. }
            | DecodeError::OutsideStreamBlock { .. } => None,
            DecodeError::UnknownTag { .. } => Some(0),
            DecodeError::Truncated { offset, .. }
            | DecodeError::UnterminatedString { offset, .. }
            | DecodeError::InvalidUtf8 { offset, .. }
            | DecodeError::InvalidByte { offset, .. }
            | DecodeError::CountTooLarge { offset, .. }
            | DecodeError::NegativeLength { offset, .. }
            | DecodeError::TrailingBytes { offset, .. } => Some(*offset),
        }
    }

    /// True when the bytes may be fine but arrived in the wrong place: the
    /// decoder's options or stream-block state disagree with the server.
    /// Such a stream cannot be trusted from here on; reconnect and resume
    /// from the last confirmed LSN.
    pub fn is_out_of_sequence(&self) -> bool {
        matches!(
            self,
            DecodeError::RequiresProtocol { .. }
                | DecodeError::InsideStreamBlock { .. }
                | DecodeError::OutsideStreamBlock { .. }
        )
    }
}
