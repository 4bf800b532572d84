// dstack-vmm-doctor: can this host run dstack TDX guests with the QEMU backend? (see src/vmm/qemu/doctor.h)
#include "vmm/qemu/doctor.h"

int main(int argc, char** argv) { return dstack::vmm::qemu::doctor_main(argc - 1, argv + 1); }
