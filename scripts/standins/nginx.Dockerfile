# A stand-in for nginx:1.28-alpine, built by scripts/containers.sh where Docker Hub cannot be reached:
# Debian's nginx, laid out as the official image is (conf.d/*.conf inside http { }, logs on the
# container's stdout and stderr, `nginx -g "daemon off;"`). From Debian forky: docker/nginx.conf's
# `resolve` in an upstream needs nginx 1.27.3 or newer, and bookworm and trixie have older ones.
# Debian suite: forky
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
# A testing suite's Release file expires a week after it is signed, and a mirror that is a snapshot
# (as these machines' is) keeps serving it after that.
RUN apt-get -o Acquire::Check-Valid-Until=false update \
    && apt-get install -y --no-install-recommends nginx \
    && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/default \
    && ln -sf /dev/stdout /var/log/nginx/access.log \
    && ln -sf /dev/stderr /var/log/nginx/error.log
EXPOSE 80
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
