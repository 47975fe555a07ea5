//! Brute-force reference for window results. INTERFACE STUB — implemented by the window work
//! package.
