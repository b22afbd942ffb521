//! Placeholder: filled in by the halton work.
