//! Stage `disk`: GPT layout, filesystems and bootloaders written into a raw disk image.
