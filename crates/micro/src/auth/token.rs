//! Placeholder: signed access tokens.
