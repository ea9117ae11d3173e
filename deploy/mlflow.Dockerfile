# The tracking server's image: MLflow with the PostgreSQL and S3 clients it needs baked in, so a pod
# or container starts with no network (the stock image has neither).
#   docker build -f deploy/mlflow.Dockerfile -t <registry>/apgrid-mlflow:3.17.2 deploy
FROM ghcr.io/mlflow/mlflow:v3.17.2
RUN pip install --no-cache-dir psycopg2-binary==2.9.13 boto3==1.44.8
