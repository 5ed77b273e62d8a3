//! Pure rules of the directory and token service: no I/O, time passed in.

pub mod assertion;
pub mod claims;
pub mod directory;
pub mod federation;
pub mod resource;
