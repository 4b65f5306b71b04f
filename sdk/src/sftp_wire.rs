//! The SFTP protocol's numbers (draft-ietf-secsh-filexfer-02, version 3):
//! packet types, status codes, open and attribute flags. One list for the
//! sandbox's SFTP server (`guest/sftp.rs`, which includes this file by
//! path: the guest is built std-only) and the gateway's SFTP audit
//! (`gateway/src/ssh/sftp_audit.rs`). Each side uses what it needs.
#![allow(dead_code)]

// Packet types (§3).
pub const FXP_INIT: u8 = 1;
pub const FXP_VERSION: u8 = 2;
pub const FXP_OPEN: u8 = 3;
pub const FXP_CLOSE: u8 = 4;
pub const FXP_READ: u8 = 5;
pub const FXP_WRITE: u8 = 6;
pub const FXP_LSTAT: u8 = 7;
pub const FXP_FSTAT: u8 = 8;
pub const FXP_SETSTAT: u8 = 9;
pub const FXP_FSETSTAT: u8 = 10;
pub const FXP_OPENDIR: u8 = 11;
pub const FXP_READDIR: u8 = 12;
pub const FXP_REMOVE: u8 = 13;
pub const FXP_MKDIR: u8 = 14;
pub const FXP_RMDIR: u8 = 15;
pub const FXP_REALPATH: u8 = 16;
pub const FXP_STAT: u8 = 17;
pub const FXP_RENAME: u8 = 18;
pub const FXP_READLINK: u8 = 19;
pub const FXP_SYMLINK: u8 = 20;
pub const FXP_STATUS: u8 = 101;
pub const FXP_HANDLE: u8 = 102;
pub const FXP_DATA: u8 = 103;
pub const FXP_NAME: u8 = 104;
pub const FXP_ATTRS: u8 = 105;
pub const FXP_EXTENDED: u8 = 200;
pub const FXP_EXTENDED_REPLY: u8 = 201;

// Attribute flags (§5).
pub const ATTR_SIZE: u32 = 0x1;
pub const ATTR_UIDGID: u32 = 0x2;
pub const ATTR_PERMISSIONS: u32 = 0x4;
pub const ATTR_ACMODTIME: u32 = 0x8;
pub const ATTR_EXTENDED: u32 = 0x8000_0000;

// OPEN flags (pflags, §6.3).
pub const FXF_READ: u32 = 0x1;
pub const FXF_WRITE: u32 = 0x2;
pub const FXF_APPEND: u32 = 0x4;
pub const FXF_CREAT: u32 = 0x8;
pub const FXF_TRUNC: u32 = 0x10;
pub const FXF_EXCL: u32 = 0x20;

// Status codes (§7).
pub const FX_OK: u32 = 0;
pub const FX_EOF: u32 = 1;
pub const FX_NO_SUCH_FILE: u32 = 2;
pub const FX_PERMISSION_DENIED: u32 = 3;
pub const FX_FAILURE: u32 = 4;
pub const FX_BAD_MESSAGE: u32 = 5;
pub const FX_OP_UNSUPPORTED: u32 = 8;
