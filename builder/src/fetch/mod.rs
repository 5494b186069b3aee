//! Stage `fetch`: artifacts downloaded by URL, verified by sha256, kept in a content-addressed cache.
