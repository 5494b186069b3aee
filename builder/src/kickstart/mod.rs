//! Stage `pxe`: kickstart and network boot configurations for installing the commit on bare metal.
