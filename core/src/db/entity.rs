//! sea-orm entities, one file per table; the schema itself is owned by `trellis-migrations`.

pub mod nodes;
pub mod users;
