/* LD_PRELOAD shim: give wrk a TLS client certificate.
 *
 * wrk (4.x) has no client-certificate option. It creates one SSL_CTX at start-up;
 * this shim wraps SSL_CTX_new and loads the certificate chain and private key named by
 * the environment variables WRK_CLIENT_CERT and WRK_CLIENT_KEY (PEM files) into every
 * context it creates. Without those variables the shim changes nothing.
 *
 * Built at run time by bench/harness.py:
 *   gcc -shared -fPIC -O2 -o wrk_client_cert.so wrk_client_cert.c -ldl -lssl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <openssl/ssl.h>

typedef SSL_CTX *(*ctx_new_fn)(const SSL_METHOD *);

SSL_CTX *SSL_CTX_new(const SSL_METHOD *method) {
    static ctx_new_fn real = NULL;
    if (real == NULL) {
        real = (ctx_new_fn)dlsym(RTLD_NEXT, "SSL_CTX_new");
        if (real == NULL) {
            fprintf(stderr, "wrk_client_cert: SSL_CTX_new not found\n");
            abort();
        }
    }
    SSL_CTX *ctx = real(method);
    const char *cert = getenv("WRK_CLIENT_CERT");
    const char *key = getenv("WRK_CLIENT_KEY");
    if (ctx == NULL || cert == NULL || key == NULL) {
        return ctx;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        fprintf(stderr, "wrk_client_cert: cannot load %s / %s\n", cert, key);
        abort();
    }
    if (getenv("WRK_CLIENT_CERT_VERBOSE") != NULL) {
        fprintf(stderr, "wrk_client_cert: loaded %s\n", cert);
    }
    return ctx;
}
