#include "cluster/tls.h"

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>

#include "cluster/controller.h"

namespace nrx::cluster {
namespace {

Result<std::string> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::not_found("cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Runs argv (no shell), output captured; Errors: kInternal with the output.
Status run(const std::vector<std::string>& argv) {
  std::string cmd;
  for (const std::string& a : argv) {
    std::string q = "'";
    for (char c : a) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
    cmd += q + "' ";
  }
  cmd += "2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return Status::internal("cannot run " + argv[0]);
  std::string out;
  char buf[512];
  while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  const int rc = pclose(p);
  if (rc != 0) return Status::internal(argv[0] + " " + argv[1] + " failed: " + out.substr(0, 2000));
  return Status::ok_status();
}

}  // namespace

Status init_cluster_dir(const std::string& dir, const std::vector<std::string>& extra_names) {
  if (access((dir + "/secret").c_str(), F_OK) == 0) {
    return Status::already_exists(dir + "/secret exists: this directory already holds a cluster (remove it to start over)");
  }
  if (system("command -v openssl >/dev/null 2>&1") != 0) {
    return Status::failed_precondition("the openssl command is missing (apt-get install openssl)");
  }
  if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) return Status::internal("cannot create " + dir);
  std::string san = "DNS:localhost,DNS:nrx-controller,IP:127.0.0.1,IP:10.77.0.1";
  for (const std::string& n : extra_names) {
    const bool ip = !n.empty() && std::all_of(n.begin(), n.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)) || c == '.'; });
    san += (ip ? ",IP:" : ",DNS:") + n;
  }
  const std::string ext = dir + "/controller.ext";
  {
    std::ofstream e(ext);
    e << "subjectAltName=" << san << "\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
      << "extendedKeyUsage=serverAuth\n";
    if (!e) return Status::internal("cannot write " + ext);
  }
  NRX_RETURN_IF_ERROR(run({"openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                           "-nodes", "-keyout", dir + "/ca.key", "-out", dir + "/ca.pem", "-days", "3650", "-subj",
                           "/CN=nrx cluster CA"}));
  NRX_RETURN_IF_ERROR(run({"openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                           "-keyout", dir + "/controller.key", "-out", dir + "/controller.csr", "-subj",
                           "/CN=nrx-controller"}));
  NRX_RETURN_IF_ERROR(run({"openssl", "x509", "-req", "-in", dir + "/controller.csr", "-CA", dir + "/ca.pem", "-CAkey",
                           dir + "/ca.key", "-CAcreateserial", "-out", dir + "/controller.pem", "-days", "3650",
                           "-extfile", ext}));
  unlink((dir + "/controller.csr").c_str());
  unlink(ext.c_str());
  unlink((dir + "/ca.srl").c_str());
  chmod((dir + "/ca.key").c_str(), 0600);
  chmod((dir + "/controller.key").c_str(), 0600);
  // The secret last: its presence marks a complete directory.
  std::random_device rd;
  std::string secret;
  for (int i = 0; i < 32; ++i) {
    char b[3];
    std::snprintf(b, sizeof b, "%02x", rd() & 0xff);
    secret += b;
  }
  const std::string path = dir + "/secret";
  std::ofstream s(path);
  s << secret << "\n";
  if (!s) return Status::internal("cannot write " + path);
  s.close();
  chmod(path.c_str(), 0600);
  return Status::ok_status();
}

Result<std::string> read_secret(const std::string& path) {
  NRX_ASSIGN_OR_RETURN(std::string s, read_file(path));
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.erase(0, 1);
  if (s.size() < kMinSecretBytes) {
    return Status::invalid_argument(path + ": a cluster secret needs at least " + std::to_string(kMinSecretBytes) + " bytes");
  }
  for (char c : s) {
    if (!std::isprint(static_cast<unsigned char>(c))) return Status::invalid_argument(path + ": the secret is not printable");
  }
  return s;
}

Result<std::optional<TlsFiles>> load_tls(const std::string& dir, bool server) {
  if (access((dir + "/ca.pem").c_str(), F_OK) != 0) return std::optional<TlsFiles>();
  TlsFiles t;
  NRX_ASSIGN_OR_RETURN(t.ca_pem, read_file(dir + "/ca.pem"));
  if (server) {
    NRX_ASSIGN_OR_RETURN(t.cert_pem, read_file(dir + "/controller.pem"));
    NRX_ASSIGN_OR_RETURN(t.key_pem, read_file(dir + "/controller.key"));
  }
  return std::optional<TlsFiles>(std::move(t));
}

}  // namespace nrx::cluster
