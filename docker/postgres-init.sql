-- The CRM mock keeps its records in a database of its own on the same server.
CREATE DATABASE crm;
