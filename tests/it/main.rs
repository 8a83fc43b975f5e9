mod car;
mod unixfs_read;
