// TLS material and the cluster secret for the control plane (DESIGN 5). `nrx cluster init DIR`
// writes a cluster directory: |secret| (32 random bytes, hex), a self-signed CA (ca.pem, ca.key)
// and the controller's certificate signed by it (controller.pem, controller.key) for the names the
// controller is reached by (localhost, 127.0.0.1, the VM network's 10.77.0.1, and any --san). It
// runs the openssl command (the openssl package), so the keys are made by OpenSSL itself. A
// directory that holds ca.pem turns TLS on for both sides: the controller serves with its
// certificate; machines and tools check it against ca.pem. The secret authenticates machines.
//
//   NRX_RETURN_IF_ERROR(init_cluster_dir("/etc/nrx", {}));
//   std::string secret = read_secret("/etc/nrx/secret").value();
//   std::optional<TlsFiles> tls = load_tls("/etc/nrx").value();   // nullopt: no ca.pem there
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "base/status.h"

namespace nrx::cluster {

struct TlsFiles {
  std::string ca_pem;    // contents, not paths
  std::string cert_pem;  // the controller's (empty on a client)
  std::string key_pem;
};

// Writes DIR/secret, ca.pem, ca.key, controller.pem, controller.key (keys mode 0600). Errors:
// kAlreadyExists (DIR/secret exists: init never overwrites a cluster), kFailedPrecondition (the
// openssl command is missing), kInternal (openssl failed: its output is in the message).
Status init_cluster_dir(const std::string& dir, const std::vector<std::string>& extra_names);
// The secret in |path| (surrounding whitespace trimmed). Errors: kNotFound, kInvalidArgument (shorter
// than kMinSecretBytes, or not printable).
Result<std::string> read_secret(const std::string& path);
// TLS material of a cluster directory: nullopt when DIR has no ca.pem (plaintext). |server|: the
// controller's certificate and key are required too. Errors: kNotFound for a missing file.
Result<std::optional<TlsFiles>> load_tls(const std::string& dir, bool server);

}  // namespace nrx::cluster
