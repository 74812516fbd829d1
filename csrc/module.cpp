// The Python module mzsr_fast._C. Importing it loads this shared library, whose
// static TORCH_LIBRARY blocks register the mzsr_fast:: ops with the dispatcher;
// the module itself exposes nothing.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
}
