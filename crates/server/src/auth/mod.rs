//! Authentication primitives for the coordination server: Argon2id password
//! hashing with an unknown-user timing guard (`password`), RFC 6238 TOTP
//! second factor with replay protection (`totp`, using `base32` for the
//! secrets users type), an in-memory, bounded login failure limiter keyed
//! by user and source address (`ratelimit`), and ChaCha20-Poly1305 sealing
//! of secrets the server must read back, under a 0600 key file (`seal`).
//! All of them take time and input as arguments and do no network I/O.

pub mod base32;
pub mod password;
pub mod ratelimit;
pub mod seal;
pub mod totp;
