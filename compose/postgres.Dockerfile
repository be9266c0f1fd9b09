# The stack's PostgreSQL (compose.yaml): Debian's postgresql-15 on the same local base image as
# the project's, so nothing is pulled from a registry. On the first start, entrypoint.sh makes
# the cluster in the volume (/var/lib/postgresql/data): the user POSTGRES_USER with the password
# POSTGRES_PASSWORD or LEANHPO_PG_PASSWORD (SCRAM), and the databases in POSTGRES_DATABASES (Optuna's and MLflow's).
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql \
    && chmod 700 /var/lib/postgresql/data
COPY --chmod=755 postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
USER postgres
VOLUME ["/var/lib/postgresql/data"]
EXPOSE 5432
STOPSIGNAL SIGINT
CMD ["postgres-entrypoint.sh"]
