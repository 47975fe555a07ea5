// INTERFACE STUB — implemented by the state work package.
