mod gen;
mod store;
