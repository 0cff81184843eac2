-- Roles and database for docker-compose, matching services/devstack (local stack).
CREATE ROLE optout_admin LOGIN PASSWORD 'admin-secret';
CREATE ROLE optout_app LOGIN PASSWORD 'app-secret';
CREATE DATABASE optout OWNER optout_admin;
\connect optout
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO optout_admin;
GRANT USAGE ON SCHEMA public TO optout_app;
