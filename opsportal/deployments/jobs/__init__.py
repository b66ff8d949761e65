"""The deployment app's jobs (each module registers its runners; DeploymentsConfig.ready imports
them): deploy, delete, and changes to a managed endpoint's deployments."""
