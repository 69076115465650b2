from gaudi_kubectl.cli import main

raise SystemExit(main())
