from cnnzip.cli import main

raise SystemExit(main())
