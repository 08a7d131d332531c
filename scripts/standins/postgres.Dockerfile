# A stand-in for postgres:17-bookworm, built by scripts/containers.sh where Docker Hub cannot be
# reached: Debian's PostgreSQL server (the `postgresql` package), started as the official image
# starts it: at the first start a cluster is made in $PGDATA from POSTGRES_USER, POSTGRES_PASSWORD
# and POSTGRES_DB, with password logins from the network; `pg_isready` on the PATH.
# Debian suite: bookworm
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
# The official image's postgres user (uid 999) made first, so the package uses it; no cluster at
# install time (the entrypoint makes one in the volume), as the official image does.
RUN groupadd --system --gid 999 postgres \
    && useradd --system --uid 999 --gid postgres --home-dir /var/lib/postgresql --shell /bin/bash postgres \
    && apt-get update \
    && apt-get install -y --no-install-recommends postgresql-common \
    && sed -ri 's/#(create_main_cluster) .*$/\1 = false/' /etc/postgresql-common/createcluster.conf \
    && apt-get install -y --no-install-recommends postgresql \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o postgres -g postgres -m 2775 /var/run/postgresql \
    && install -d -o postgres -g postgres -m 700 /var/lib/postgresql/data
COPY --chmod=755 postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
# UTF-8, as the official image's en_US.utf8: with no locale initdb would make an SQL_ASCII cluster,
# whose text psycopg returns as bytes.
ENV PGDATA=/var/lib/postgresql/data \
    LANG=C.UTF-8
VOLUME ["/var/lib/postgresql/data"]
EXPOSE 5432
STOPSIGNAL SIGINT
USER 999:999
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
