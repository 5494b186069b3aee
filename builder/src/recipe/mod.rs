//! Stage `resolve`: recipe files parsed, `extends`/`include` merged, validated and digested.

pub mod schema;

pub use schema::Recipe;
