//! Test support for nodeimg: the qemu harness, in-process fakes of services that cannot run
//! here (Vault KV v2, cloud metadata services) and the kubeadm/kubelet doubles. Every double
//! says in its first lines what it stands in for.

pub mod apiserver_double;
pub mod bins;
pub mod fakes;
pub mod kubeadm_double;

#[cfg(feature = "qemu")]
pub mod qemu;
