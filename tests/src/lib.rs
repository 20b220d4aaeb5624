//! Shared harness for the end-to-end tests: free ports, external tools and
//! processes that are killed on drop.
