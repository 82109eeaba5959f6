//! Size limits. Decoders check these before allocating anything sized by the input.

/// The largest datagram assim sends or accepts, header and AEAD tag included. 1232 bytes fits
/// the IPv6 minimum MTU (1280) minus the IPv6 and UDP headers, so datagrams never fragment at IP.
pub const MAX_DATAGRAM_SIZE: usize = 1232;

/// The most fragments one reliable message may be split into.
pub const MAX_FRAGMENTS: usize = 2048;

/// The largest reassembled reliable message (discovery results reach hundreds of KiB).
pub const MAX_MESSAGE_SIZE: usize = 2 * 1024 * 1024;

/// The AEAD tag appended to every sealed payload.
pub const AEAD_TAG_LEN: usize = 16;
