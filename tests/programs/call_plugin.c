// Calls the descriptor function of a shared library the process already has loaded (a
// qbdi plugin attached by `qbdi run`): with --all-maps, a plugin's code must still run
// natively, not under the Vm.
#include <dlfcn.h>
#include <stdio.h>

int main(int argc, char **argv) {
  if (argc < 2) return 2;
  void *h = dlopen(argv[1], RTLD_NOW | RTLD_NOLOAD);
  if (!h) {
    puts("not loaded");
    return 3;
  }
  void *(*descriptor)(void) = (void *(*)(void))dlsym(h, "qbdi_plugin_descriptor");
  if (!descriptor) return 4;
  puts(descriptor() ? "descriptor" : "null");
  return 0;
}
