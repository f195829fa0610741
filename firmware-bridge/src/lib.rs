//! `dishsync-firmware-bridge`: the frame protocol for microcontroller scales
//! and sold-out boards. With default features off the crate is `#![no_std]`
//! and needs no allocator, so firmware can depend on it directly; the `std`
//! feature is where the bridge daemon lives.
//!
//! The codec (postcard messages in COBS frames with a CRC) is specified in the
//! project's issues and is not part of this version yet.

#![cfg_attr(not(feature = "std"), no_std)]

/// Largest frame on the wire, delimiter included, in bytes.
pub const MAX_FRAME: usize = 256;
