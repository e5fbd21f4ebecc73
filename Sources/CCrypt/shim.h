// libxcrypt (Debian: libcrypt-dev): crypt_r and crypt_gensalt_rn, the same
// hashing /etc/shadow uses (yescrypt "$y$", SHA-512 "$6$").
#include <crypt.h>
