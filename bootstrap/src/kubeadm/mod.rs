//! Driving kubeadm: version detection, config rendering (v1beta3/v1beta4), init and join.
