//! Weir's connectors. Each connector is one module behind one cargo feature; the engine's
//! traits are all they depend on.
