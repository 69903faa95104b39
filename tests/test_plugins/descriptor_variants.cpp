// A descriptor as an incompatible plugin would write it, to test the host's refusals.
#include <admis/sdk.h>

extern "C" __attribute__((visibility("default"))) const admis_plugin_descriptor* admis_plugin_entry() {
  static const admis_plugin_descriptor d = {
#ifdef ADMIS_TEST_VARIANT_ABI_MAJOR
      ADMIS_ABI_MAJOR + 98, 0, "future-plugin", "9.0.0", ADMIS_TORCH_VERSION_STRING, _GLIBCXX_USE_CXX11_ABI,
#else
      ADMIS_ABI_MAJOR, ADMIS_ABI_MINOR, "old-torch-plugin", "1.0.0", "0.4.1", _GLIBCXX_USE_CXX11_ABI,
#endif
      0, nullptr};
  return &d;
}
