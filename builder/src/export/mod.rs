//! Stage `export`: the raw disk image into the formats platforms take (raw, qcow2, vhd).
