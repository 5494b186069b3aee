//! A one-sector boot disk for exercising the runner without an OS image.

/// A 1 MiB raw disk whose MBR boot code writes `message` and CR LF to COM1 (port 0x3f8) and
/// halts. SeaBIOS ignores virtio disks smaller than this, hence the padding.
pub fn boot_sector_disk(message: &str) -> anyhow::Result<Vec<u8>> {
    // 16-bit real mode, loaded at 0x7c00:
    //   cli; xor ax,ax; mov ds,ax; mov si,MSG; mov dx,0x3f8
    //   next: lodsb; test al,al; jz done; out dx,al; jmp next
    //   done: hlt; jmp done
    const CODE_LEN: u16 = 0x16;
    let msg_addr = 0x7c00u16 + CODE_LEN;
    #[rustfmt::skip]
    let mut sector = vec![
        0xfa, 0x31, 0xc0, 0x8e, 0xd8, 0xbe, (msg_addr & 0xff) as u8, (msg_addr >> 8) as u8,
        0xba, 0xf8, 0x03, 0xac, 0x84, 0xc0, 0x74, 0x03, 0xee, 0xeb, 0xf8, 0xf4, 0xeb, 0xfd,
    ];
    debug_assert_eq!(sector.len(), CODE_LEN as usize);
    if message.bytes().any(|b| b == 0) || message.len() > 400 {
        anyhow::bail!("probe message must be at most 400 bytes without NUL");
    }
    sector.extend_from_slice(message.as_bytes());
    sector.extend_from_slice(b"\r\n\0");
    sector.resize(510, 0);
    sector.extend_from_slice(&[0x55, 0xaa]);
    sector.resize(1 << 20, 0);
    Ok(sector)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_sector_layout() {
        let disk = boot_sector_disk("HELLO").unwrap();
        assert_eq!(disk.len(), 1 << 20);
        assert_eq!(&disk[510..512], &[0x55, 0xaa]);
        assert_eq!(&disk[0x16..0x1b], b"HELLO");
        // `mov si, imm16` points at the message.
        assert_eq!(u16::from_le_bytes([disk[6], disk[7]]), 0x7c16);
        assert!(boot_sector_disk(&"x".repeat(401)).is_err());
    }
}
