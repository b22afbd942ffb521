//! Placeholder: filled in by the ranking work.
