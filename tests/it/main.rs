mod daemon;
mod gen;
mod store;
