/* Compiled as C11 by the nrx_syscall_header_is_c test: the ABI and libnrx headers are C, with the
 * same layout a C compiler gives them (the headers' own _Static_asserts run here too). */
#include "kernel/syscall/libnrx.h"

_Static_assert(sizeof(struct nrx_dirent) == 272, "nrx_dirent layout");

int nrx_abi_c_check(void);
int nrx_abi_c_check(void) {
  struct nrx_request request = {0};
  struct nrx_response response;
  request.sysno = NRX_SYS_STAT;
  return (int)nrx_syscall(&request, "/", 1, &response, 0, 0) + (int)response.stat.size;
}
